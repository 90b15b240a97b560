"""The command starts without torch or transformers: building every command's parser (what ``--help`` and
``--version`` do) imports neither, while the library still registers every method and adapter format on the
first lookup, however it is entered."""

from __future__ import annotations

import subprocess
import sys

import peftlab

HEAVY = ("torch", "transformers", "accelerate", "datasets", "matplotlib")


def run_python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_building_every_commands_parser_imports_no_heavy_library():
    loaded = run_python(
        "import sys, peftlab.cli as cli\n"
        "parser = cli.build_parser()\n"
        "commands = parser._subparsers._group_actions[0].choices\n"
        "for name, command in commands.items():\n"
        "    command.format_help()\n"
        f"print(sorted(name for name in {HEAVY!r} if name in sys.modules), len(commands))"
    )
    heavy, commands = loaded.rsplit(" ", 1)
    assert heavy == "[]", f"building the parser imported {heavy}"
    assert int(commands) >= 9


def test_version_and_help_answer():
    version = subprocess.run([sys.executable, "-m", "peftlab.cli", "--version"], capture_output=True, text=True,
                             timeout=300)
    assert version.returncode == 0 and version.stdout.strip() == f"peftlab {peftlab.__version__}"
    helped = subprocess.run([sys.executable, "-m", "peftlab.cli", "train", "--help"], capture_output=True,
                            text=True, timeout=300)
    assert helped.returncode == 0 and "--method" in helped.stdout and "sst2" in helped.stdout


def test_the_registry_finds_every_method_without_importing_peftlab_first():
    names = run_python("from peftlab.core.registry import method_names\nprint(' '.join(method_names()))")
    assert set(names.split()) == set(peftlab.list_methods())


def test_loading_finds_the_peft_format_without_importing_peftlab_first():
    formats = run_python("from peftlab.core.adapter_formats import adapter_formats\n"
                         "print(' '.join(name for name, _, _ in adapter_formats()))")
    assert "peft" in formats.split()


def test_the_public_api_loads_on_first_use():
    from peftlab import apply, load_adapter

    assert callable(apply) and callable(load_adapter)
    assert set(peftlab.__all__) <= set(dir(peftlab))
    missing = run_python("import peftlab\ntry:\n    peftlab.no_such_name\nexcept AttributeError as e:\n    print(e)")
    assert "no_such_name" in missing
