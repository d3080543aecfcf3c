"""The report: section builders, HTML/Markdown rendering, charts, the dataset analysis, and alpacare-compare."""
