"""harness: the study tool around core (CLI, studies, planning, execution, tracking, reports)."""
