"""The documentation site (mkdocs.yml, docs/) builds in strict mode, with its API reference.

- ``mkdocs build --strict`` passes, into a temporary folder, with no warning: every page of docs/
  is in the nav, every link to a page or heading of the site finds it, and the API page's
  modules render from their docstrings.
- A link that leaves docs/ (trust.md links ``../README.md``) cannot be a page of the site, so
  mkdocs.yml has MkDocs report it at "info"; here each one must name a real file of the
  repository outside docs/, so a mistyped link still fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path, PurePosixPath

from galaxylib.config import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs"
API_MODULES = (
    "galaxylib.inference.predictor",
    "galaxylib.inference.classify",
    "galaxylib.artifact",
    "galaxylib.catalog.run",
    "galaxylib.pipeline.steps",
)
# MkDocs' line for a link whose target is not a documentation file (mkdocs.yml: links.not_found: info)
NOT_FOUND = re.compile(
    r"Doc file '([^']+)' contains a link '([^']+)', but the target.* is not found among documentation"
)


def links_outside_docs_problems(log: str) -> tuple[list[str], list[str]]:
    """The links MkDocs found no page for, from its log: (those naming a real repository file
    outside docs/, the problems: a missing file, or a missing page inside docs/)."""
    outside, problems = [], []
    for page, link in NOT_FOUND.findall(log):
        path = link.split("#", 1)[0].split("?", 1)[0]
        target = Path(os.path.normpath(DOCS / PurePosixPath(page).parent / path))
        where = f"docs/{page} links {link!r}"
        if target == DOCS or DOCS in target.parents:
            problems.append(f"{where}: no such page in docs/")
        elif PROJECT_ROOT not in target.parents:
            problems.append(f"{where}: outside the repository")
        elif not target.exists():
            problems.append(f"{where}: {target.relative_to(PROJECT_ROOT)} does not exist")
        else:
            outside.append(f"{where} -> {target.relative_to(PROJECT_ROOT)}")
    return outside, problems


def test_the_site_builds_in_strict_mode_with_no_warning(tmp_path):
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(PROJECT_ROOT / "mkdocs.yml")]
        + ["--site-dir", str(site)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2.0, not a warning
        timeout=300,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "WARNING" not in log and "ERROR" not in log, log
    outside, problems = links_outside_docs_problems(log)
    assert not problems, "\n".join(problems)
    print(f"links to repository files outside docs/: {outside}")

    assert (site / "index.html").is_file()
    for page in DOCS.rglob("*.md"):  # every page became an HTML page (the nav holds them all)
        rel = page.relative_to(DOCS).with_suffix("")
        html = site / ("index.html" if rel.name == "index" else rel / "index.html")
        assert html.is_file(), f"{page.relative_to(PROJECT_ROOT)} was not built"
    api = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    for module in API_MODULES:
        assert f'id="{module}"' in api, f"{module} is missing from the API reference"
    assert 'id="galaxylib.inference.predictor.Predictor"' in api
    assert 'id="galaxylib.inference.classify.classify"' in api


def test_a_link_out_of_docs_must_name_a_real_file():
    log = "\n".join(
        f"INFO    -  Doc file '{page}' contains a link '{link}', but the target is not found among documentation files."
        for page, link in (
            ("trust.md", "../README.md"),
            ("reference/api.md", "../../configs/quick.yaml#top"),
            ("dataset.md", "nothere.md"),
            ("dataset.md", "../configs/missing.yaml"),
            ("dataset.md", "../../elsewhere.md"),
        )
    )
    outside, problems = links_outside_docs_problems(log)
    assert outside == [
        "docs/trust.md links '../README.md' -> README.md",
        "docs/reference/api.md links '../../configs/quick.yaml#top' -> configs/quick.yaml",
    ]
    assert problems == [
        "docs/dataset.md links 'nothere.md': no such page in docs/",
        "docs/dataset.md links '../configs/missing.yaml': configs/missing.yaml does not exist",
        "docs/dataset.md links '../../elsewhere.md': outside the repository",
    ]
