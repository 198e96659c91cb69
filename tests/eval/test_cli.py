"""`python -m eval` is the one entry point: every command it lists is documented in its help and importable."""

import importlib

import eval.__main__ as entry


def test_every_command_is_listed_and_has_a_main():
    for command, module in entry.COMMANDS.items():
        assert f"\n  {command} " in entry.__doc__, command
        assert callable(importlib.import_module(module).main), command
