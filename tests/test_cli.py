"""The ``qgn`` command line itself: options anywhere a user puts them, help without markup."""

from __future__ import annotations

import pytest

from qgn.cli import build_parser, main


def test_verbose_works_after_the_subcommand_too():
    parser = build_parser()
    assert parser.parse_args(["-v", "predict", "--checkpoint", "c", "--text", "t"]).verbose is True
    assert parser.parse_args(["predict", "--checkpoint", "c", "--text", "t", "-v"]).verbose is True
    assert parser.parse_args(["predict", "--checkpoint", "c", "--text", "t"]).verbose is False


def test_verbose_after_the_subcommand_shows_the_traceback(tmp_path):
    # -v means a traceback instead of the one-line error, wherever it is given
    with pytest.raises(Exception, match="checkpoint not found"):
        main(["predict", "--checkpoint", str(tmp_path / "none"), "--text", "Anna", "--image", __file__, "-v"])


def test_help_texts_carry_no_docstring_markup(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        text = command.format_help()
        assert "``" not in text, name
