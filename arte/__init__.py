"""ARTE: align a teacher LLM with the preferences of small students (Liu et al., 2024, arXiv 2406.19227).

The method as a library: values in, values out, files only at the paths it is given, no network, database
or CLI (the OpenAI-compatible teacher backend is the one exception, by design). Heavy runtimes (torch,
transformers, llama.cpp) are imported only inside the modules that use them, so ``import arte`` is light.
"""

from arte.answers import is_correct, normalize_answer, parse_answer
from arte.drafts import Draft, read_drafts, write_drafts
from arte.errors import (ArteError, BackendError, ConfigError, DraftFormatError, ModelError, ScoringError,
                         TaskFormatError)
from arte.models import DEFAULT_MODEL, ModelRef, resolve_model
from arte.scoring import DraftScore, ScoreResult, ScoringConfig, score_drafts
from arte.student import Continuation, Generation, Student
from arte.tasks import Example, Task, TaskSplit, format_question, load_task, partition, split_task

__version__ = "0.1.0"

__all__ = [
    "ArteError", "BackendError", "ConfigError", "Continuation", "DEFAULT_MODEL", "Draft", "DraftFormatError",
    "DraftScore", "Example", "Generation", "ModelError", "ModelRef", "ScoreResult", "ScoringConfig",
    "ScoringError", "Student", "Task", "TaskFormatError", "TaskSplit", "format_question", "is_correct",
    "load_task", "normalize_answer", "parse_answer", "partition", "read_drafts", "resolve_model",
    "score_drafts", "split_task", "write_drafts",
]
