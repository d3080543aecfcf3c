"""Prompt text: what the teacher is asked (instructions, responses) and the student's template."""
