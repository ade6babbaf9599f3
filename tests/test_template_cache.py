"""Compiled templates are kept between runs (Jinja's bytecode cache in a private folder of the
temp directory): a new process loads what an earlier one compiled, a changed template is
compiled again, and a cache that is broken or cannot be made never stops a message."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest

from bot.render import messages
from bot.render.messages import Renderer, _template, bundled_templates_dir

SIMPLE = "slack/answer_help.json.j2"  # it imports slack/_blocks.j2
CONTEXT = {"command": "/openrouter", "unknown": "", "bot_user": ""}


@pytest.fixture()
def temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's own temp directory (the cache's home), and no environment kept from
    before: every `Renderer()` here starts as a new process's would."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    messages._environment.cache_clear()
    yield folder
    messages._environment.cache_clear()


def new_process_env(templates_dir: Path | None = None) -> jinja2.Environment:
    messages._environment.cache_clear()
    return Renderer(templates_dir).env


def refuse_to_compile(env: jinja2.Environment, monkeypatch: pytest.MonkeyPatch) -> None:
    def compile_(*args: object, **kwargs: object) -> None:
        raise AssertionError("compiled although the cache holds it")

    monkeypatch.setattr(env, "compile", compile_)


def test_a_new_process_loads_every_bundled_template_an_earlier_one_compiled(
    temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = [p.relative_to(bundled_templates_dir()).as_posix()
             for p in sorted(bundled_templates_dir().rglob("*.j2"))]
    first = new_process_env()
    for name in names:
        _template(first, name)
    [cache] = temp_dir.iterdir()  # one folder, this user's only
    assert len(list(cache.iterdir())) == len(names)
    second = new_process_env()
    refuse_to_compile(second, monkeypatch)
    for name in names:
        assert _template(second, name).name == name  # loaded, not compiled


def test_a_changed_template_is_compiled_again(temp_dir: Path, tmp_path: Path) -> None:
    own = tmp_path / "tpl"
    own.mkdir()
    (own / "hello.txt.j2").write_text("one {{ n }}")
    assert _template(new_process_env(own), "hello.txt.j2").render(n=1) == "one 1"
    (own / "hello.txt.j2").write_text("two {{ n }}")
    assert _template(new_process_env(own), "hello.txt.j2").render(n=2) == "two 2"


def test_cache_files_of_another_jinja_version_are_not_read(
    temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jinja checks a template's source, not what it was compiled with: the files carry a
    fingerprint of the module that sets the options and of Jinja's version."""
    _template(new_process_env(), SIMPLE)
    [cache] = temp_dir.iterdir()
    [stored] = cache.iterdir()
    assert stored.name.startswith("openrouter-usage-")
    monkeypatch.setattr(jinja2, "__version__", "0.0.0-other")  # as after an upgrade
    env = new_process_env()
    compiled: list[object] = []
    compile_ = env.compile

    def counted(*args: Any, **kwargs: Any) -> Any:
        compiled.append(args)
        return compile_(*args, **kwargs)

    monkeypatch.setattr(env, "compile", counted)
    _template(env, SIMPLE)
    assert len(compiled) == 1  # compiled, not loaded from the other version's file
    assert len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["garbage", "empty", "folder"])
def test_a_damaged_cache_file_is_compiled_again(temp_dir: Path, damage: str) -> None:
    expected = _template(new_process_env(), SIMPLE).render(CONTEXT)
    [cache] = temp_dir.iterdir()
    for stored in cache.iterdir():
        if damage == "folder":
            stored.unlink()
            stored.mkdir()  # reading it fails; writing over it too
        else:
            stored.write_bytes(b"\x00garbage" if damage == "garbage" else b"")
    assert _template(new_process_env(), SIMPLE).render(CONTEXT) == expected


def test_no_usable_temp_directory_means_no_cache_and_the_same_messages(
    temp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _template(new_process_env(), SIMPLE).render(CONTEXT)
    not_a_folder = temp_dir / "file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    env = new_process_env()
    assert env.bytecode_cache is None
    assert _template(env, SIMPLE).render(CONTEXT) == expected


def test_a_cache_folder_removed_under_a_running_process_is_passed_over(temp_dir: Path) -> None:
    expected = _template(new_process_env(), SIMPLE).render(CONTEXT)
    env = new_process_env()
    [cache] = temp_dir.iterdir()
    shutil.rmtree(cache)  # e.g. the temp directory cleaned while a daemon runs
    assert _template(env, SIMPLE).render(CONTEXT) == expected
    assert not cache.exists()
