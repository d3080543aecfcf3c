"""Seed tasks: load, validate and normalize the clinician-written tasks that prompt the teacher.

A seed task has six fields, as in the released ``med_seed.json``::

    {type, topic, view, difficulty, instruction, input}

The released file spells task types and views freely ("Rewrites", "USMLE style Q&A",
"Patient's Perspective", "Expert (Physician)"...). We map the known variants onto the paper's ten
task types and a small set of canonical views, so that sampling and reporting by type or view
count each task once. Any other type is kept as written (whitespace and stray punctuation
trimmed): the release lets the teacher write any format, and that diversity is the point; with
``closed_types`` (``instructions.closed_types=true``) an unknown type is an error instead. A view
we cannot place becomes "Other", and the label as written is kept in ``view_raw`` whenever it
differs from the canonical one (it is richer: "Radiologist" says more than "Clinician").

Where the seeds come from, first match wins: an explicit path > ``$ALPACARE_DATA_DIR/med_seed.json``
> ``<cache_dir>/data/med_seed.json`` (what ``alpacare-fetch`` writes) > the built-in starter set
``starter_seeds.json`` (original tasks written for this project, not the released ones).

Error messages name the file and the record's 0-based index in the file's list of tasks.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from alpacare.data.fetch import locate_data_file
from alpacare.data.jsonl import read_json_or_jsonl
from alpacare.errors import DataError
from alpacare.prompts.alpaca import NO_INPUT, has_input

SEED_FILE = "med_seed.json"
STARTER_SEEDS_PATH = Path(__file__).with_name("starter_seeds.json")
TASK_FIELDS = ("type", "topic", "view", "difficulty", "instruction", "input")
DIFFICULTY_RANGE = (1, 5)

# The paper's ten task types, in its order.
TASK_TYPES = (
    "Text Generation",
    "Open Q&A",
    "Chat",
    "Rewrite",
    "Summarization",
    "Classification",
    "USMLE-style Q&A",
    "Multiple-choice Q&A",
    "Single-hop Reasoning",
    "Multi-hop Reasoning",
)

# An open task type longer than this is not a type name (a sentence the parser took for one).
MAX_OPEN_TYPE_CHARS = 60

# Spellings that do not reduce to a canonical type by _type_key alone (keys are _type_key form).
_TYPE_ALIASES = {
    "rewriting": "Rewrite",
    "paraphrase": "Rewrite",
    "open ended q&a": "Open Q&A",
    "open question answering": "Open Q&A",
    "generation": "Text Generation",
    "conversation": "Chat",
    "dialogue": "Chat",
    "summary": "Summarization",
    "summarisation": "Summarization",
    "usmle q&a": "USMLE-style Q&A",
    "mcq": "Multiple-choice Q&A",
}

# Canonical views: who is asking or who the answer is for.
VIEWS = (
    "Medical Student",
    "Patient",
    "Caregiver",
    "General Public",
    "Clinician",
    "Nurse",
    "Pharmacist",
    "Allied Health Professional",
    "Researcher",
    "Educator",
    "Public Health Professional",
)
OTHER_VIEW = "Other"

# View rules, checked top to bottom on the lowercased label; the first rule with a matching
# pattern wins. The order settles overlaps: "Patient's Perspective" is a patient before it is
# anything else, "Public Health Expert" is public health before "expert" makes it a clinician,
# "Med School Professor" is an educator before "school" hints at a student, "Highschool
# Student" is a lay reader before "student" makes it a medical student, and "Health Tech
# Specialist" is allied health before "specialist" makes it a clinician. Patterns start at a
# word boundary, so "therapist" (allied health) does not catch "psychotherapist" (a clinician).
_VIEW_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Patient", (r"\bpatients?\b",)),
    ("Caregiver", (r"\bcare ?givers?\b", r"\bparents?\b", r"\bfamily\b", r"\bmother\b", r"\bfather\b",
                   r"\bguardian\b", r"\bspouse\b")),
    ("Public Health Professional", (r"\bpublic health\b", r"\bepidemiolog", r"\bpolicy\b", r"\bgovernment\b",
                                    r"\bofficial\b", r"\bcommunity health\b")),
    ("General Public", (r"\bgeneral public\b", r"\bpublic\b", r"\blay ?(person|people|man|reader)\b",
                        r"\bhigh ?school\b", r"\bconsumer\b", r"\bcitizen\b")),
    ("Educator", (r"\bprofessor\b", r"\btutor\b", r"\beducat", r"\bteacher\b", r"\blecturer\b",
                  r"\binstructor\b", r"\badmissions?\b", r"\bwriters?\b", r"\bcommunicators?\b")),
    ("Medical Student", (r"\bstudents?\b", r"\btraining\b", r"\btrainees?\b", r"\bmed ?school\b")),
    ("Nurse", (r"\bnurses?\b", r"\bnursing\b", r"\bmidwi")),
    ("Pharmacist", (r"\bpharmacists?\b", r"\bpharmacy\b")),
    ("Allied Health Professional", (r"\bdieti[ct]ian", r"\bnutritionist", r"\btherapist\b", r"\bphysiotherap",
                                    r"\bradiographer", r"\btechnicians?\b", r"\btechnologists?\b", r"\btech\b",
                                    r"\bcounsell?ors?\b", r"\bparamedic", r"\bhygienist", r"\boptometrist",
                                    r"\bspeech\b")),
    ("Researcher", (r"\bresearch", r"\bscientists?\b", r"\bgeneticists?\b", r"ethicists?\b",
                    r"\bstatistician")),
    ("Clinician", (r"\bclinicians?\b", r"\bphysicians?\b", r"\bdoctors?\b", r"\bexperts?\b", r"\bspecialists?\b",
                   r"\bpractitioners?\b", r"\bproviders?\b", r"\bresidents?\b", r"\binterns?\b",
                   r"\bsurgeons?\b", r"\bgp\b", r"ologists?\b", r"iatrists?\b", r"iatricians?\b",
                   r"\bpsychotherapist")),
)


def _type_key(label: str) -> str:
    """Fold a type label to a comparison key: case, hyphens, "Task", "Style" and plurals ignored."""
    key = label.lower().replace("\u2019", "'").replace("&amp;", "&")
    key = re.sub(r"[-_/]+", " ", key)
    key = re.sub(r"\b(q and a|qa|question answering)\b", "q&a", key)
    key = re.sub(r"\b(task|tasks|style|type)\b", " ", key)
    key = re.sub(r"\bmulti\b", "multiple", key)
    words = [re.sub(r"(?<=[a-z]{3})s$", "", w) if not w.endswith("ss") else w for w in key.split()]
    return " ".join(words)


_TYPE_BY_KEY = {_type_key(t): t for t in TASK_TYPES} | {_type_key(k): v for k, v in _TYPE_ALIASES.items()}


def normalize_type(label: Any, where: str | None = None, closed: bool = True) -> str:
    """Map a task-type label ("Rewrites", "USMLE style Q&A", "Multi-hop reasoning") to a canonical type.

    An unknown type raises DataError, prefixed with ``where`` (e.g. "med_seed.json: record 12"),
    unless ``closed`` is false: then it is kept as written, trimmed ("Case report", "Translation").
    """
    canonical = _TYPE_BY_KEY.get(_type_key(label)) if isinstance(label, str) else None
    if canonical is None and not closed and isinstance(label, str):
        written = " ".join(label.split()).strip(" .,:;*\"'`")
        if written and len(written) <= MAX_OPEN_TYPE_CHARS:
            return written
    if canonical is None:
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}unknown task type {label!r} (expected one of: {', '.join(TASK_TYPES)})")
    return canonical


def normalize_view(label: Any) -> str:
    """Map a view label ("Medical students", "Expert (Physician)", "Dietician") to a canonical view.

    Labels no rule recognizes map to "Other"; never raises, since a view only steers wording.
    """
    if not isinstance(label, str) or not label.strip():
        return OTHER_VIEW
    text = " ".join(re.sub(r"[^a-z0-9']+", " ", label.lower().replace("\u2019", "'")).split())
    for exact, canonical in ((v.lower(), v) for v in VIEWS):
        if text == exact:
            return canonical
    for canonical, patterns in _VIEW_RULES:
        if any(re.search(p, text) for p in patterns):
            return canonical
    return OTHER_VIEW


def _parse_difficulty(value: Any, where: str) -> int:
    # The released file stores difficulty as "1".."5"; accept those and plain ints, nothing fuzzier.
    if isinstance(value, bool):
        level = None
    elif isinstance(value, int):
        level = value
    elif isinstance(value, str) and value.strip().isdigit():
        level = int(value.strip())
    else:
        level = None
    low, high = DIFFICULTY_RANGE
    if level is None or not low <= level <= high:
        raise DataError(f"{where}: difficulty must be {low}-{high}, got {value!r}")
    return level


def _required_text(record: dict[str, Any], field: str, where: str) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: {field} must be a non-empty string, got {value!r}")
    return value.strip()


def _normalize_input(value: Any, where: str) -> str:
    if value is None:
        return NO_INPUT
    if not isinstance(value, str):
        raise DataError(f"{where}: input must be a string, got {type(value).__name__}")
    return value.strip() if has_input(value) else NO_INPUT


def validate_task(record: Any, where: str, closed_types: bool = True) -> dict[str, Any]:
    """Check one seed task and return a normalized copy.

    The copy has exactly the six task fields (known types and views canonical, other types as
    written unless ``closed_types``, difficulty an int 1-5,
    input ``"<noinput>"`` when empty or None), plus ``view_raw`` when the view was remapped.
    ``where`` prefixes every error, e.g. ``"med_seed.json: record 12"``.
    """
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in TASK_FIELDS if f not in record and f != "input"]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
    raw_view = _required_text(record, "view", where)
    task = {
        "type": normalize_type(record["type"], where, closed=closed_types),
        "topic": _required_text(record, "topic", where),
        "view": normalize_view(raw_view),
        "difficulty": _parse_difficulty(record["difficulty"], where),
        "instruction": _required_text(record, "instruction", where),
        "input": _normalize_input(record.get("input"), where),
    }
    if task["view"] != raw_view:
        task["view_raw"] = raw_view
    return task


def _read_task_list(path: Path) -> list[Any]:
    """Read a JSON list, or JSONL (one task per line); the content decides, not the suffix."""
    data = read_json_or_jsonl(path)
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of seed tasks, got a JSON {type(data).__name__}")
    return data


def read_seed_file(path: str | Path, closed_types: bool = True) -> list[dict[str, Any]]:
    """Read and validate every task of one seed file; an empty file is an error."""
    path = Path(path)
    records = _read_task_list(path)
    if not records:
        raise DataError(f"{path}: contains no seed tasks")
    return [validate_task(record, f"{path}: record {i}", closed_types) for i, record in enumerate(records)]


def resolve_seed_file(path: str | Path | None = None, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """The seed file to use and where it came from: "explicit", "$ALPACARE_DATA_DIR", "cache" or "built-in"."""
    found = locate_data_file(SEED_FILE, explicit=path, cache_dir=cache_dir)
    return found if found else (STARTER_SEEDS_PATH, "built-in")


def seed_source(path: str | Path | None = None, cache_dir: str | Path | None = None) -> str:
    """One line for run reports, e.g. ``"$ALPACARE_DATA_DIR: /data/med_seed.json"``."""
    resolved, origin = resolve_seed_file(path, cache_dir)
    if origin == "built-in":
        return f"built-in starter seeds: {resolved}"
    return f"{origin}: {resolved}"


def load_seed_tasks(path: str | Path | None = None, cache_dir: str | Path | None = None,
                    closed_types: bool = True) -> list[dict[str, Any]]:
    """Load and normalize seed tasks: explicit path > $ALPACARE_DATA_DIR > cache > built-in starter set."""
    resolved, _ = resolve_seed_file(path, cache_dir)
    return read_seed_file(resolved, closed_types)


def load_starter_tasks() -> list[dict[str, Any]]:
    """The built-in starter seed tasks, normalized."""
    return read_seed_file(STARTER_SEEDS_PATH)


def remap_counts(raw_records: Iterable[dict[str, Any]]) -> dict[str, Counter]:
    """How raw type/view labels were remapped: {"type": Counter{"Rewrites -> Rewrite": 5}, "view": ...}.

    Only labels that change are counted; unknown types count as "-> ?" instead of raising.
    """
    counts: dict[str, Counter] = {"type": Counter(), "view": Counter()}
    for record in raw_records:
        raw_type, raw_view = record.get("type"), record.get("view")
        try:
            canonical_type = normalize_type(raw_type)
        except DataError:
            canonical_type = "?"
        if canonical_type != raw_type:
            counts["type"][f"{raw_type} -> {canonical_type}"] += 1
        canonical_view = normalize_view(raw_view)
        if canonical_view != raw_view:
            counts["view"][f"{raw_view} -> {canonical_view}"] += 1
    return counts
