"""Review packages: what reviewers get (CSV + offline HTML form), what they send back, and the checks.

A package is a list of items numbered 1..N. Every item carries an ``item_hash`` made of one short
sha256 per field (``h:<instruction>.<input>.<answer(s)>.<meta>``), so an edited cell is found and
named; the package carries ``package_hash`` (sha256 over the ordered item ids and hashes) and a
``package_id`` derived from it, repeated on every CSV row and in the HTML form's saved file, so a row
or file from another export is caught. The export also writes a key file (``audit_key.json``,
``pairwise_key.json``) that stays with the researcher; imports cross-check against it when found.

Returned files: the CSV (filled in a spreadsheet; ``,``/``;``/tab separated; UTF-8 with or without
BOM) or the JSON the HTML form saves (``"format": "alpacare-review-answers"``). Every problem is a
``DataError`` naming the file and the row (CSV: the spreadsheet row number, header = row 1; JSON:
the entry number) or the missing item ids.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from alpacare.data.jsonl import write_bytes_atomic
from alpacare.errors import DataError

ANSWERS_FORMAT = "alpacare-review-answers"
KEY_FORMAT = "alpacare-review-key"
FORMAT_VERSION = 1
AUDIT_VERDICTS = ("correct", "partially correct", "incorrect", "unsafe")
PAIRWISE_VERDICTS = ("A", "B", "tie")
BOOKKEEPING = ("item_hash", "n_items", "package_id", "package_hash")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class Spec:
    kind: str                      # "audit" | "pairwise"
    text_fields: tuple[str, ...]   # shown to the reviewer, hashed one by one
    meta_fields: tuple[str, ...]   # hashed together (type and source row of an audit item)
    verdicts: tuple[str, ...]

    @property
    def columns(self) -> list[str]:
        shown = ["type"] if "type" in self.meta_fields else []
        hidden = [m for m in self.meta_fields if m != "type"]
        return ["item_id", *shown, *self.text_fields, "verdict", "comment", "reviewer", *hidden, *BOOKKEEPING]

    def normalize_verdict(self, value: str) -> Optional[str]:
        """The canonical verdict, "" for an empty cell, None for an unknown value."""
        key = re.sub(r"[\s_\-]+", " ", (value or "").strip().lower())
        if not key:
            return ""
        for v in self.verdicts:
            if key == v.lower():
                return v
        return None


AUDIT = Spec("audit", ("instruction", "input", "output"), ("type", "source_index"), AUDIT_VERDICTS)
PAIRWISE = Spec("pairwise", ("instruction", "input", "answer_a", "answer_b"), (), PAIRWISE_VERDICTS)
SPECS = {s.kind: s for s in (AUDIT, PAIRWISE)}


def norm_text(value: Any) -> str:
    """Text as shown and hashed: line endings unified, outer whitespace stripped."""
    if value is None:
        return ""
    return str(value).replace("\r\n", "\n").replace("\r", "\n").strip()


def _h(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]


def field_hashes(spec: Spec, item: dict[str, Any]) -> list[str]:
    parts = [_h(norm_text(item.get(f))) for f in spec.text_fields]
    if spec.meta_fields:
        parts.append(_h(json.dumps([norm_text(item.get(m)) for m in spec.meta_fields], ensure_ascii=False)))
    return parts


def item_hash(spec: Spec, item: dict[str, Any]) -> str:
    return "h:" + ".".join(field_hashes(spec, item))


def package_hash(spec: Spec, ids_and_hashes: list[tuple[int, str]]) -> str:
    payload = json.dumps({"format": ANSWERS_FORMAT, "version": FORMAT_VERSION, "kind": spec.kind,
                          "items": [[i, h] for i, h in ids_and_hashes]}, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass
class Package:
    """The reviewer-facing content: items (with ids and hashes) and the package identity."""

    spec: Spec
    items: list[dict[str, Any]]
    package_hash: str = ""
    package_id: str = ""

    @classmethod
    def build(cls, spec: Spec, items: list[dict[str, Any]]) -> "Package":
        out = []
        for i, item in enumerate(items, 1):
            clean = {"item_id": i}
            for f in (*spec.meta_fields, *spec.text_fields):
                clean[f] = item[f] if f == "source_index" else norm_text(item.get(f))
            clean["item_hash"] = item_hash(spec, clean)
            out.append(clean)
        phash = package_hash(spec, [(it["item_id"], it["item_hash"]) for it in out])
        return cls(spec, out, phash, f"{spec.kind}-{phash.split(':', 1)[1][:10]}")

    def form_data(self, title: str, intro: str) -> dict[str, Any]:
        return {"format": ANSWERS_FORMAT, "version": FORMAT_VERSION, "kind": self.spec.kind,
                "package_id": self.package_id, "package_hash": self.package_hash, "n_items": len(self.items),
                "title": title, "intro": intro, "verdicts": list(self.spec.verdicts), "items": self.items}


# --------------------------------------------------------------------------- writing

def _csv_cell(value: Any) -> str:
    """Guard against spreadsheet formula parsing: a leading quote (Excel hides it; import strips it)."""
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _csv_uncell(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def write_text_atomic(path: Path, text: str, bom: bool = False) -> None:
    write_bytes_atomic(Path(path), (("\ufeff" if bom else "") + text).encode("utf-8"))


def render_csv(pkg: Package) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    cols = pkg.spec.columns
    writer.writerow(cols)
    for item in pkg.items:
        row = {**item, "verdict": "", "comment": "", "reviewer": "", "n_items": len(pkg.items),
               "package_id": pkg.package_id, "package_hash": pkg.package_hash}
        writer.writerow([_csv_cell(row.get(c, "")) for c in cols])
    return buf.getvalue()


def _script_json(obj: Any) -> str:
    """JSON that is safe inside <script>: no "</script>", "<!--" or line separators can break out."""
    text = json.dumps(obj, ensure_ascii=False, sort_keys=True)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, esc)
    return text


def render_html(pkg: Package, title: str, intro: str) -> str:
    import html as _html

    template = resources.files("alpacare.review").joinpath("form.html").read_text(encoding="utf-8")
    return (template.replace("__TITLE__", _html.escape(f"{title} ({pkg.package_id})"))
            .replace("__PACKAGE_JSON__", _script_json(pkg.form_data(title, intro))))


# --------------------------------------------------------------------------- reading returned files

@dataclass
class Row:
    where: str                  # "row 5 (item 4)" / "entry 4 (item 4)"
    values: dict[str, str]


@dataclass
class Returned:
    path: Path
    rows: list[Row]
    reviewer: str = ""          # from the file; the file stem when empty
    not_utf8: bool = False


def _decode(path: Path) -> tuple[str, bool]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a returned CSV or JSON file") from None
    try:
        return raw.decode("utf-8-sig"), False
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), True  # an "ANSI" CSV from Excel; hashes will tell


def read_returned(path: str | Path, spec: Spec) -> Returned:
    path = Path(path)
    text, not_utf8 = _decode(path)
    if not text.strip():
        raise DataError(f"{path}: empty file")
    if text.lstrip().startswith("{"):
        return _read_json(path, text, spec)
    if text.lstrip()[:15].lower().startswith(("<!doctype", "<html")):
        raise DataError(f"{path}: this is the HTML form itself; open it in a browser, fill it in, press "
                        f"\"Save answers\" and import the saved .json file")
    return _read_csv(path, text, spec, not_utf8)


def _read_json(path: Path, text: str, spec: Spec) -> Returned:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or data.get("format") != ANSWERS_FORMAT or not isinstance(data.get("items"), list):
        raise DataError(f"{path}: not a saved review form (expected \"format\": \"{ANSWERS_FORMAT}\" and a list of items)")
    if data.get("kind") != spec.kind:
        raise DataError(f"{path}: this is a {data.get('kind')!r} review file, not {spec.kind!r}; "
                        f"use alpacare-review {data.get('kind')}-import")
    rows = []
    top = {k: str(data.get(k, "")) for k in ("n_items", "package_id", "package_hash")}
    for i, item in enumerate(data["items"], 1):
        if not isinstance(item, dict):
            raise DataError(f"{path}: entry {i}: expected a JSON object")
        values = {k: ("" if v is None else str(v)) for k, v in item.items()}
        rows.append(Row(f"entry {i} (item {values.get('item_id', '?')})", {**values, **top}))
    reviewer = data.get("reviewer")
    return Returned(path, rows, reviewer.strip() if isinstance(reviewer, str) else "")


def _read_csv(path: Path, text: str, spec: Spec, not_utf8: bool) -> Returned:
    first = text.split("\n", 1)[0]
    delimiter = max((",", ";", "\t"), key=first.count)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        table = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    header = [h.strip().lower() for h in table[0]]
    required = ["item_id", *spec.meta_fields, *spec.text_fields, "verdict", *BOOKKEEPING]
    missing = [c for c in required if c not in header]
    if missing:
        hint = "; is this a pairwise file?" if spec.kind == "audit" and "answer_a" in header else (
            "; is this an audit file?" if spec.kind == "pairwise" and "output" in header else "")
        raise DataError(f"{path}: row 1: missing column(s) {', '.join(missing)}{hint}")
    rows = []
    for lineno, cells in enumerate(table[1:], 2):
        if not any(c.strip() for c in cells):
            continue  # spreadsheets append empty rows
        if len(cells) > len(header) and any(c.strip() for c in cells[len(header):]):
            raise DataError(f"{path}: row {lineno}: more cells than columns (a shifted or pasted row?)")
        values = {h: _csv_uncell(cells[j]) if j < len(cells) else "" for j, h in enumerate(header)}
        rows.append(Row(f"row {lineno} (item {values.get('item_id', '').strip() or '?'})", values))
    return Returned(path, rows, not_utf8=not_utf8)


@dataclass
class Expected:
    """What every row must agree with: from the key file, else from the first file read."""

    package_id: str
    package_hash: str
    n_items: int
    item_hashes: dict[int, str] = field(default_factory=dict)   # from the key only
    source: str = ""                                             # where these came from, for messages


@dataclass
class Verdicts:
    """One returned file after checking: reviewer, verdict and comment per item id."""

    path: Path
    reviewer: str
    verdicts: dict[int, str]
    comments: dict[int, str]
    unrated: list[int]
    items: dict[int, dict[str, str]]  # texts and metadata as returned (checked against the hashes)


def _parse_int(text: str) -> Optional[int]:
    text = (text or "").strip()
    if re.fullmatch(r"\d+(\.0+)?", text):  # a spreadsheet may write 7 as 7.0
        return int(float(text))
    return None


def check_returned(ret: Returned, spec: Spec, expected: Optional[Expected], allow_incomplete: bool = False
                   ) -> tuple[Verdicts, Expected]:
    """Check one returned file; raise DataError naming the file and row on the first problem."""
    where_file = str(ret.path)
    hint = " (the file is not UTF-8: save it as \"CSV UTF-8\")" if ret.not_utf8 else ""
    if not ret.rows:
        raise DataError(f"{where_file}: no items")
    if expected is None:
        first = ret.rows[0]
        n = _parse_int(first.values.get("n_items", ""))
        if n is None or not first.values.get("package_id") or not first.values.get("package_hash", "").startswith("sha256:"):
            raise DataError(f"{where_file}: {first.where}: package_id, package_hash or n_items is missing or damaged")
        expected = Expected(first.values["package_id"].strip(), first.values["package_hash"].strip(), n,
                            source=f"{where_file}, {first.where}")
    seen: dict[int, str] = {}
    verdicts: dict[int, str] = {}
    comments: dict[int, str] = {}
    items: dict[int, dict[str, str]] = {}
    unrated: list[tuple[int, str]] = []
    hashes: dict[int, str] = {}
    reviewers: dict[str, str] = {}
    for row in ret.rows:
        v = row.values
        at = f"{where_file}: {row.where}"
        pid = v.get("package_id", "").strip()
        if pid != expected.package_id:
            raise DataError(f"{at}: from another export (package {pid or 'missing'}, expected "
                            f"{expected.package_id} from {expected.source})")
        if v.get("package_hash", "").strip() != expected.package_hash:
            raise DataError(f"{at}: package_hash differs from {expected.source} (edited, or from another export)")
        if _parse_int(v.get("n_items", "")) != expected.n_items:
            raise DataError(f"{at}: n_items {v.get('n_items', '')!r} differs from {expected.source} "
                            f"({expected.n_items}; edited, or from another export)")
        item_id = _parse_int(v.get("item_id", ""))
        if item_id is None:
            raise DataError(f"{at}: item_id {v.get('item_id', '')!r} is not an item number (an extra row?)")
        if not 1 <= item_id <= expected.n_items:
            raise DataError(f"{at}: extra item: this export has items 1-{expected.n_items}")
        if item_id in seen:
            raise DataError(f"{at}: duplicate of item {item_id} (already in {seen[item_id]})")
        seen[item_id] = row.where
        reference = expected.item_hashes.get(item_id) or v.get("item_hash", "").strip()
        ref_parts = reference[2:].split(".") if reference.startswith("h:") else []
        n_parts = len(spec.text_fields) + (1 if spec.meta_fields else 0)
        if len(ref_parts) != n_parts:
            raise DataError(f"{at}: item_hash is missing or damaged")
        got = field_hashes(spec, v)
        for name, want, have in zip([*spec.text_fields, "type/source"], ref_parts, got):
            if want != have:
                label = name.replace("_", " ") if name != "type/source" else "type or source_index"
                raise DataError(f"{at}: {label} text was edited (it differs from the exported item){hint}")
        hashes[item_id] = reference
        verdict = spec.normalize_verdict(v.get("verdict", ""))
        if verdict is None:
            raise DataError(f"{at}: unknown verdict {v.get('verdict', '').strip()!r} "
                            f"(expected one of: {', '.join(spec.verdicts)})")
        if verdict:
            verdicts[item_id] = verdict
        else:
            unrated.append((item_id, row.where))
        comments[item_id] = norm_text(v.get("comment", ""))
        items[item_id] = {k: norm_text(v.get(k)) for k in (*spec.meta_fields, *spec.text_fields)}
        name = norm_text(v.get("reviewer", ""))
        if name:
            reviewers.setdefault(name, row.where)
    missing = sorted(set(range(1, expected.n_items + 1)) - set(seen))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise DataError(f"{where_file}: item(s) {shown} missing (expected {expected.n_items} items, "
                        f"found {len(seen)})")
    recomputed = package_hash(spec, sorted(hashes.items()))
    if recomputed != expected.package_hash:
        raise DataError(f"{where_file}: the items do not add up to package {expected.package_id} "
                        f"(item_hash values edited, or rows from another export)")
    if unrated and not allow_incomplete:
        item_id, where = unrated[0]
        raise DataError(f"{where_file}: {where}: no verdict ({len(unrated)} item(s) unrated; fill them in, "
                        f"or pass --allow-incomplete to score only the rated items)")
    if len(reviewers) > 1:
        (a, wa), (b, wb) = list(reviewers.items())[:2]
        raise DataError(f"{where_file}: {wb}: reviewer {b!r} differs from {a!r} ({wa}); one file per reviewer")
    reviewer = ret.reviewer or next(iter(reviewers), "") or ret.path.stem
    return Verdicts(ret.path, reviewer, verdicts, comments, [i for i, _ in unrated], items), expected


def load_key(path: Path, spec: Spec) -> dict[str, Any]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such key file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise DataError(f"{path}: not a valid key file (not JSON)") from None
    if not isinstance(data, dict) or data.get("format") != KEY_FORMAT or data.get("kind") != spec.kind \
            or not isinstance(data.get("items"), list):
        raise DataError(f"{path}: not an alpacare-review {spec.kind} key file")
    return data


def expected_from_key(key: dict[str, Any], key_path: Path) -> Expected:
    return Expected(key["package_id"], key["package_hash"], len(key["items"]),
                    {int(it["item_id"]): it["item_hash"] for it in key["items"]}, source=str(key_path))


def check_all(paths: list[Path], spec: Spec, key: Optional[dict[str, Any]], key_path: Optional[Path],
              allow_incomplete: bool) -> tuple[list[Verdicts], Expected]:
    """Check every returned file against the key (or the first file) and each other."""
    expected = expected_from_key(key, key_path) if key else None
    results: list[Verdicts] = []
    by_reviewer: dict[str, Path] = {}
    for path in paths:
        verdicts, expected = check_returned(read_returned(path, spec), spec, expected, allow_incomplete)
        if verdicts.reviewer in by_reviewer:
            raise DataError(f"{path}: reviewer {verdicts.reviewer!r} also returned {by_reviewer[verdicts.reviewer]}; "
                            f"one file per reviewer (fill in the reviewer name to tell them apart)")
        by_reviewer[verdicts.reviewer] = path
        results.append(verdicts)
    assert expected is not None
    return results, expected


def write_package(out_dir: Path, stem: str, pkg: Package, title: str, intro: str, key: dict[str, Any],
                  force: bool) -> dict[str, Path]:
    """Write DIR/<stem>_key.json, DIR/<stem>.csv and DIR/<stem>.html, each atomically (key first).

    An existing key for a different package is never overwritten without ``force``: for a
    pairwise study it is the only way to un-blind the returned answers.
    """
    key_path = out_dir / f"{stem}_key.json"
    if key_path.exists() and not force:
        try:
            old = json.loads(key_path.read_text(encoding="utf-8")).get("package_id")
        except (OSError, ValueError, AttributeError):
            old = None
        if old != pkg.package_id:
            raise DataError(f"{key_path}: holds another export ({old}); returned files need it to be imported. "
                            f"Choose another --out, or pass --force to replace it")
    paths = {"key": key_path, "csv": out_dir / f"{stem}.csv", "html": out_dir / f"{stem}.html"}
    write_text_atomic(paths["key"], json.dumps(key, ensure_ascii=False, indent=2) + "\n")
    write_text_atomic(paths["csv"], render_csv(pkg), bom=True)
    write_text_atomic(paths["html"], render_html(pkg, title, intro))
    return paths
