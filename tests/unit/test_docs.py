"""The documentation says what the code does: settings, user_config models, metrics, dashboard, links, module map.

Each check parses a table found under a named heading and compares it with the code in both directions; the
parsers refuse to return nothing, so a renamed heading or a broken table fails instead of passing vacuously.
"""

from __future__ import annotations

import json
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel, SecretStr

from serve.core.batching import BatchConfig, CoalesceConfig
from serve.runtime import metrics
from serve.runtime.settings import ENV_PREFIX, Settings

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
CONFIGURATION = DOCS / "configuration.md"
OPERATIONS = DOCS / "operations.md"
DASHBOARD = REPO / "deploy" / "grafana" / "emotion-dashboard.json"
README_MAX_LINES = 250


# --- markdown parsing -----------------------------------------------------------------------------------------------


def section(text: str, heading: str) -> str:
    """The body under the markdown heading whose title is ``heading`` (any level), up to the next heading of the
    same or a higher level. Code blocks are skipped when looking for headings."""
    lines = text.splitlines()
    in_code, start, level = False, None, 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_code = not in_code
            continue
        match = None if in_code else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        if start is None:
            if match.group(2).strip() == heading:
                start, level = i + 1, len(match.group(1))
        elif len(match.group(1)) <= level:
            return "\n".join(lines[start:i])
    if start is None:
        raise AssertionError(f"no heading {heading!r}")
    return "\n".join(lines[start:])


def split_row(line: str) -> list[str]:
    """Cells of one table row; a ``|`` inside backticks or escaped as ``\\|`` does not split."""
    cells, cell, in_code, i = [], "", False, 0
    body = line.strip()
    body = body[1:] if body.startswith("|") else body
    body = body[:-1] if body.endswith("|") and not body.endswith("\\|") else body
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and body[i + 1] == "|":
            cell += "|"
            i += 2
            continue
        if char == "`":
            in_code = not in_code
        if char == "|" and not in_code:
            cells.append(cell.strip())
            cell = ""
        else:
            cell += char
        i += 1
    cells.append(cell.strip())
    return cells


def first_table(text: str, heading: str, columns: list[str]) -> list[dict[str, str]]:
    """The first table under ``heading`` as rows keyed by its header; its header must start with ``columns``."""
    lines = section(text, heading).splitlines()
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("|")), None)
    assert start is not None, f"no table under {heading!r}"
    header = split_row(lines[start])
    assert header[: len(columns)] == columns, f"table under {heading!r} has columns {header}, expected {columns}"
    assert start + 1 < len(lines) and re.fullmatch(r"\|?(\s*:?-{3,}:?\s*\|)+\s*:?-*:?\s*\|?", lines[start + 1].strip())
    rows = []
    for line in lines[start + 2 :]:
        if not line.lstrip().startswith("|"):
            break
        cells = split_row(line)
        assert len(cells) == len(header), f"row {line!r} has {len(cells)} cells, the header {len(header)}"
        rows.append(dict(zip(header, cells, strict=True)))
    assert rows, f"the table under {heading!r} has no rows"
    return rows


def unquote(cell: str) -> str:
    """A table cell's value without surrounding backticks."""
    cell = cell.strip()
    return cell[1:-1].strip() if len(cell) >= 2 and cell.startswith("`") and cell.endswith("`") else cell


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --- values ---------------------------------------------------------------------------------------------------------


def shown(value: Any) -> str:
    """A default as the docs show it: 'none' for nothing, paths relative to the repo, lower-case booleans."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Path):
        return value.relative_to(REPO).as_posix() if value.is_absolute() and value.is_relative_to(REPO) else str(value)
    return str(value)


def same_value(documented: str, expected: Any) -> bool:
    text = unquote(documented).replace(",", "").replace("_", "") if isinstance(expected, int | float) else documented
    want = shown(expected)
    if isinstance(expected, int | float) and not isinstance(expected, bool):
        try:
            return float(unquote(text)) == float(expected)
        except ValueError:
            return False
    return unquote(text).lower() == want.lower() if want in ("none", "true", "false") else unquote(text) == want


def test_value_normalisation() -> None:
    assert same_value("`models/default`", REPO / "models" / "default")
    assert not same_value("`models/other`", REPO / "models" / "default")
    assert same_value("none", None) and same_value("none", SecretStr("")) and not same_value("`x`", None)
    assert same_value("`10485760`", 10 * 1024 * 1024) and same_value("1.0", 1) and not same_value("`2`", 1.0)
    assert same_value("`false`", False) and not same_value("`true`", False)
    assert same_value("`auto`", "auto") and not same_value("`on`", "auto")


def test_table_parser_reads_cells_and_refuses_missing_tables() -> None:
    text = "# A\n\n## T\n\n| X | Y |\n| --- | --- |\n| `a|b` | c \\| d |\n| e | f |\n\n## U\n\nno table\n"
    assert first_table(text, "T", ["X", "Y"]) == [{"X": "`a|b`", "Y": "c | d"}, {"X": "e", "Y": "f"}]
    with pytest.raises(AssertionError):
        first_table(text, "U", ["X", "Y"])
    with pytest.raises(AssertionError):
        first_table(text, "Missing", ["X", "Y"])
    with pytest.raises(AssertionError):
        first_table(text, "T", ["X", "Z"])


# --- (a) settings ---------------------------------------------------------------------------------------------------


def test_settings_table_equals_the_settings_class() -> None:
    rows = first_table(CONFIGURATION.read_text(), "Settings", ["Variable", "Default", "Meaning"])
    documented = [unquote(row["Variable"]) for row in rows]
    expected = {ENV_PREFIX + name.upper(): field for name, field in Settings.model_fields.items()}
    assert len(expected) >= 20
    assert len(documented) == len(set(documented)), "a variable is documented twice"
    assert set(documented) == set(expected), (
        f"undocumented: {sorted(set(expected) - set(documented))}; "
        f"documented but not a setting: {sorted(set(documented) - set(expected))}"
    )
    wrong = {
        row["Variable"]: (row["Default"], shown(expected[unquote(row["Variable"])].default))
        for row in rows
        if not same_value(row["Default"], expected[unquote(row["Variable"])].default)
    }
    assert not wrong, f"documented default != code default: {wrong}"
    assert all(row["Meaning"].strip() for row in rows)


def test_haproxy_environment_table_lists_the_wrappers_variables() -> None:
    rows = first_table(
        CONFIGURATION.read_text(), "HAProxy's environment (not settings)", ["Variable", "Default", "Meaning"]
    )
    documented = {unquote(row["Variable"]) for row in rows}
    script = (REPO / "serve" / "runtime" / "haproxy_loopback.sh").read_text()
    used = set(re.findall(r"\b(EMOTION_[A-Z_]+)", script))
    assert documented == used, (
        f"undocumented: {sorted(used - documented)}; not in the script: {sorted(documented - used)}"
    )
    for row in rows:
        name = unquote(row["Variable"])
        default = re.search(r"\$\{" + name + r":-([0-9]+)\}", script)
        if default:
            assert unquote(row["Default"]) == default.group(1), (
                f"{name}: documented {row['Default']}, script {default.group(1)}"
            )


# --- (d) user_config models -----------------------------------------------------------------------------------------


def _bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    low = high = None
    for item in model.model_fields[name].metadata:
        low = getattr(item, "ge", low)
        high = getattr(item, "le", high)
    return low, high


@pytest.mark.parametrize(
    ("heading", "model"),
    [("EmotionModel user_config (BatchConfig)", BatchConfig), ("Ingress user_config (CoalesceConfig)", CoalesceConfig)],
)
def test_user_config_tables_equal_the_models(heading: str, model: type[BaseModel]) -> None:
    rows = first_table(CONFIGURATION.read_text(), heading, ["Field", "Default", "Range", "Meaning"])
    documented = {unquote(row["Field"]): row for row in rows}
    assert len(documented) == len(rows), "a field is documented twice"
    assert set(documented) == set(model.model_fields), (
        f"{model.__name__}: documented {sorted(documented)}, fields {sorted(model.model_fields)}"
    )
    for name, row in documented.items():
        default = model.model_fields[name].default
        assert same_value(row["Default"], default), f"{model.__name__}.{name}: {row['Default']} != {default}"
        low, high = (float(v) for v in re.split(r"\.\.|-", row["Range"].strip(), maxsplit=1))
        assert (low, high) == _bounds(model, name), f"{model.__name__}.{name}: range {row['Range']}"


# --- (b) metrics ----------------------------------------------------------------------------------------------------


class _FakeMetric:
    created: ClassVar[list[tuple[str, str, tuple[str, ...]]]] = []

    def __init__(self, name: str, description: str = "", tag_keys: tuple[str, ...] = (), **_: object) -> None:
        suffix = {"Counter": "_total", "Histogram": "_bucket", "Gauge": ""}[type(self).__name__]
        self.created.append((f"ray_{name}{suffix}", type(self).__name__.lower(), tuple(tag_keys or ())))


class Counter(_FakeMetric):
    pass


class Gauge(_FakeMetric):
    pass


class Histogram(_FakeMetric):
    pass


@pytest.fixture
def created_metrics(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, tuple[str, tuple[str, ...]]]]:
    """{exported name: (type, tag keys)} of every metric the replicas create, with Ray's metric classes faked."""
    fake = types.ModuleType("ray.serve.metrics")
    fake.Counter, fake.Gauge, fake.Histogram = Counter, Gauge, Histogram  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "ray.serve.metrics", fake)
    _FakeMetric.created = []
    metrics.ingress_metrics()
    metrics.model_metrics()
    yield {name: (kind, tags) for name, kind, tags in _FakeMetric.created}


def test_metrics_table_lists_exactly_the_exported_names(
    created_metrics: dict[str, tuple[str, tuple[str, ...]]],
) -> None:
    rows = first_table(OPERATIONS.read_text(), "Metrics", ["Name", "Type", "Labels", "Meaning"])
    names = [unquote(row["Name"]) for row in rows]
    assert len(metrics.EXPORTED_NAMES) >= 15
    assert len(names) == len(set(names)), "a metric is documented twice"
    assert set(names) == set(metrics.EXPORTED_NAMES), (
        f"undocumented: {sorted(set(metrics.EXPORTED_NAMES) - set(names))}; "
        f"documented but not exported: {sorted(set(names) - set(metrics.EXPORTED_NAMES))}"
    )
    assert set(created_metrics) == set(metrics.EXPORTED_NAMES), "EXPORTED_NAMES differs from the metrics created"
    for row in rows:
        kind, tags = created_metrics[unquote(row["Name"])]
        assert row["Type"].split()[0] == kind, f"{row['Name']}: type {row['Type']}, the code creates a {kind}"
        assert set(backticked(row["Labels"])) == set(tags), f"{row['Name']}: labels {row['Labels']}, code {tags}"


# --- (c) dashboard --------------------------------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # panels inside collapsed rows


def dashboard_expressions() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in _panels(board["panels"]) for t in p.get("targets", []) if t.get("expr")]
    assert exprs, "the dashboard has no panel expressions"
    return exprs


def uses_metric(exprs: list[str], name: str) -> bool:
    forms = [name]
    if name.endswith("_bucket"):
        base = name.removesuffix("_bucket")
        forms = [base + suffix for suffix in ("_bucket", "_sum", "_count")]
    pattern = re.compile(r"(?<![A-Za-z0-9_:])(" + "|".join(map(re.escape, forms)) + r")(?![A-Za-z0-9_:])")
    return any(pattern.search(expr) for expr in exprs)


def test_metric_matching_is_exact() -> None:
    exprs = ["sum(rate(ray_emotion_coalescer_requests_total[1m]))", "rate(ray_emotion_batch_size_count[1m])"]
    assert not uses_metric(exprs, "ray_emotion_requests_total")
    assert uses_metric(exprs, "ray_emotion_coalescer_requests_total")
    assert uses_metric(exprs, "ray_emotion_batch_size_bucket")


def test_dashboard_has_a_panel_for_every_exported_metric() -> None:
    exprs = dashboard_expressions()
    missing = [name for name in metrics.EXPORTED_NAMES if not uses_metric(exprs, name)]
    assert not missing, f"no Grafana panel uses {missing}"
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in _panels(board["panels"])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"


# --- (e) README length and links ------------------------------------------------------------------------------------


def doc_files() -> list[Path]:
    docs = sorted(DOCS.glob("*.md"))
    assert {p.name for p in docs} >= {"api.md", "configuration.md", "operations.md", "performance.md", "decisions.md"}
    return [README, *docs]


def links(path: Path) -> list[str]:
    """Targets of inline markdown links and images, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]{2,}|`", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M)}


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert 50 < len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_readme_links_every_doc_and_the_model_card() -> None:
    targets = {t.split("#")[0] for t in links(README)}
    wanted = {f"docs/{p.name}" for p in DOCS.glob("*.md")} | {"models/default/MODEL_CARD.md"}
    assert len(wanted) >= 6 and wanted <= targets, f"README.md does not link {sorted(wanted - targets)}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_point_to_existing_files(path: Path) -> None:
    found = links(path)
    assert found, f"{path.name} has no links to check"
    broken = []
    for target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:, ws:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{path.name}: broken links {broken}"


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n[ok](page.md#top) [gone](missing.md) `[code](nowhere.md)`\n```\n[x](y.md)\n```\n")
    assert links(page) == ["page.md#top", "missing.md"]
    assert "top" in anchors(page) and slug("user_config (changed without a restart)") == (
        "user_config-changed-without-a-restart"
    )


# --- module map -----------------------------------------------------------------------------------------------------


def module_map_entries(text: str) -> set[str]:
    """Repo-relative paths the README's module map lists: folder lines (``serve/core/``) and the names under them."""
    body = section(text, "Module map")
    block = re.search(r"```\n(.*?)```", body, flags=re.S)
    assert block, "no code block under 'Module map'"
    entries, folder = set(), ""
    for line in block.group(1).splitlines():
        if not line.strip():
            continue
        names = line.strip().split("  ")[0]
        if not line.startswith(" "):
            folder = names.strip()
            assert folder.endswith("/"), f"module map folder line {line!r} must start with 'folder/'"
            continue
        entries.update(folder + name.strip() for name in names.split(",") if name.strip())
    assert len(entries) > 20
    return entries


def test_module_map_lists_every_module() -> None:
    modules = {
        p.relative_to(REPO).as_posix()
        for top in ("serve", "client", "tools", "models", "loadtests")
        for p in (REPO / top).rglob("*.py")
        if p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    modules |= {
        p.relative_to(REPO).as_posix() for p in (REPO / "serve").rglob("*") if p.suffix in {".sh", ".html", ".js"}
    }
    listed = module_map_entries(README.read_text())
    assert not modules - listed, f"README module map lacks {sorted(modules - listed)}"
    assert not {e for e in listed if e.endswith((".py", ".sh", ".html", ".js"))} - modules, "it lists gone modules"
