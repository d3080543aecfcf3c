"""Human review: a clinician audit of generated data and a blinded pairwise preference study.

Reviewers get a package they open, fill in and send back (no Python, no server): a CSV for a
spreadsheet and a self-contained HTML form (inline CSS/JS, no network) that autosaves in the
browser and saves a JSON answers file. ``alpacare-review`` (``python -m alpacare.review``) exports
packages and imports what comes back; see ``cli.py`` for the commands.

Export directory contents:

- audit: ``audit.csv``, ``audit.html`` (send either), ``audit_key.json`` (keep: source file and its
  sha256, seed, strata, item hashes; the import cross-checks returned files against it).
- pairwise: ``pairwise.csv``, ``pairwise.html`` (send either; answers shown as A and B, order
  randomized per item from the seed), ``pairwise_key.json`` (DO NOT SEND: which system is A per item).

Integrity (``package.py``): every row carries ``item_hash`` (one short sha256 per text field),
``package_id``, ``package_hash`` and ``n_items``; missing, extra, duplicated or edited items, unknown
verdicts and rows or files from another export are errors naming the file and row.

Summary JSON (``--json``; with ``--run-dir RUN_DIR`` also written atomically to
``RUN_DIR/review/audit_summary.json`` / ``RUN_DIR/review/pairwise_summary.json`` for the report).
A *proportion* is ``{"k", "n", "share", "ci_low", "ci_high"}`` (95% Wilson interval; share and bounds
null when n is 0).

audit_summary.json::

    kind            "audit"
    package_id, package_hash
    n_items         items in the package
    n_reviewers
    confidence      0.95
    interval        "wilson"
    n               verdicts scored (pooled over reviewers: each reviewer's verdict on an item counts once)
    correct, partially_correct, incorrect, unsafe    proportions over those n verdicts
    by_type         {task type: {"n", "correct", "partially_correct", "incorrect", "unsafe"}} (pooled)
    reviewers       {name: {"file", "unrated", "n", "correct", ...}}  per reviewer
    agreement       null with one reviewer, else {"n_items" (rated by all), "n_reviewers",
                    "percent_agreement", "fleiss_kappa", "cohen_kappa" (exactly two reviewers)}
    flagged         items any reviewer marked incorrect or unsafe: [{"item_id", "source_index", "type",
                    "instruction", "input", "output", "verdicts": [{"reviewer", "verdict", "comment"}]}]
    key_file        the audit_key.json the files were checked against, or null (own hashes only)
    source, seed    from audit_key.json when it was found (else absent)

pairwise_summary.json::

    kind            "pairwise"
    package_id, package_hash
    systems         {"a": {"name", "file"}, "b": {"name", "file"}}
    seed, key_file, n_items, n_reviewers, confidence (0.95), interval (how it is computed), scoring ("win 1, tie 0.5")
    n, wins_a, wins_b, ties      verdicts, counted over all reviewers
    n_items_rated   items with at least one verdict
    win_rate        system a's score: per item the mean over its reviewers (a 1, tie 0.5, b 0), then the mean over items
    ci_low, ci_high 95% Student-t interval of that mean over the n_items_rated item scores (clipped to [0, 1];
                    null with one item): reviewers of one item are not independent samples, so the
                    interval is over items, not over reviewers x items
    first_shown_preferred        share of decisive verdicts that chose the answer shown as A (position bias)
    reviewers       {name: {"file", "unrated", "n", "wins_a", "wins_b", "ties", "n_items_rated", "win_rate", "ci_low", "ci_high"}}
    agreement       null with one reviewer, else as for the audit (classes a / b / tie)
    judge_agreement null without judge verdicts (matched to study items by test-set index, instruction
                    checked), else {"file", "test_set", "reference", "model_system",
                    "model_name", "reference_name", "n_items" (shared items), "unparsed_verdicts",
                    "agreement" (same side: model / tie / reference), "cohen_kappa" (3 classes),
                    "human_win_rate", "judge_win_rate" (of the model, on the shared items),
                    "confusion_human_judge" {"human/judge": count}}
    items           [{"item_id", "source_index", "instruction", "winners": {reviewer: "a"|"b"|"tie"},
                    "comments": {reviewer: text}}]
"""
