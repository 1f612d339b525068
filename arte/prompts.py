"""Prompts of the ARTE method: the students' one-shot scoring template and the teacher's elicitation prompts.

Scoring (the paper's one-shot in-context template, plain text, no chat template)::

    {task instruction} Include your final answer with the tag <ans> and </ans>.

    Question: {draft question}
    Answer: Let's think step by step. {draft rationale ending in <ans>…</ans>}

    Question: {validation question}
    Answer: Let's think step by step.

The first three blocks are the draft's *demonstration prefix*; the last is the *item segment*. They are
tokenized separately so the prefix's tokens, and its KV state, are identical for every item.

In ``loglik`` mode the item segment ends in ``Answer: <ans>`` and each option is scored as the
continuation ``{option}</ans>``: the student skips the reasoning and the demonstration's influence on the
answer itself is measured.

Teacher prompts are chat messages (a list of ``{"role", "content"}``): the question-elicitation prompt
(3 seed questions, asks for 5 more) and K rationale styles (the paper's four), each asking for the answer
in ``<ans>…</ans>``; ``plain`` is the style that alignment pairs and tailored data use.
"""

from __future__ import annotations

from typing import Sequence

from arte.answers import ANS_CLOSE, ANS_OPEN, parse_answer, tag_answer
from arte.drafts import Draft
from arte.tasks import Example, Task, format_question

__all__ = [
    "Message",
    "scoring_prefix",
    "scoring_item",
    "option_continuation",
    "demo_rationale",
    "question_prompt",
    "rationale_prompt",
    "RATIONALE_STYLES",
    "PLAIN_STYLE",
    "QUESTIONS_PER_PROMPT",
    "OPTIONS_LABEL",
    "question_block",
    "seed_question",
    "ANSWER_EXTRACTION",
    "answer_extraction_prompt",
]

Message = dict[str, str]

_STEP = "Let's think step by step."
QUESTIONS_PER_PROMPT = 5


def _header(task: Task) -> str:
    instr = task.instruction
    tail = f"Include your final answer with the tag {ANS_OPEN} and {ANS_CLOSE}."
    return f"{instr} {tail}" if instr else tail


def demo_rationale(draft: Draft) -> str:
    """The draft's rationale, ending in the answer tag (added when the rationale lacks it)."""
    r = draft.rationale.strip()
    if parse_answer(r) is None:
        r = f"{r} {tag_answer(draft.answer)}".strip()
    return r


def scoring_prefix(task: Task, draft: Draft) -> str:
    """The draft's demonstration prefix: instruction + the draft as a solved one-shot example."""
    return f"{_header(task)}\n\nQuestion: {draft.question.strip()}\nAnswer: {_STEP} {demo_rationale(draft)}\n\n"


def scoring_item(task: Task, example: Example, mode: str) -> str:
    """The item segment that follows a prefix: ``generate`` asks for reasoning, ``loglik`` for the tag."""
    q = format_question(task, example)
    if mode == "loglik":
        return f"Question: {q}\nAnswer: {ANS_OPEN}"
    return f"Question: {q}\nAnswer: {_STEP}"


def option_continuation(option: str) -> str:
    """What ``loglik`` mode scores for one option after :func:`scoring_item`."""
    return f"{option}{ANS_CLOSE}"


# ---- teacher prompts --------------------------------------------------------------------------------

PLAIN_STYLE = "plain"

# The paper's four rationale styles (expert procedure; recall rules, then compute; the bare task
# description; eliminate options), worded for instruction-tuned teachers. ``plain`` is the bare one.
RATIONALE_STYLES: dict[str, str] = {
    "expert": ("You are an expert in this task. Solve the question the way an expert would: follow the "
               "standard procedure one step at a time, and check each step."),
    "rules": ("First recall the rules, facts or definitions that the question depends on. Then apply them "
              "to the question and work out the answer."),
    PLAIN_STYLE: "Answer the question. Think step by step.",
    "eliminate": ("Consider each possible answer in turn, explain why the wrong ones are wrong, and keep the "
                  "one that remains."),
}


OPTIONS_LABEL = "Options:"


def question_block(questions: Sequence[str]) -> str:
    """Questions numbered the way :func:`question_prompt` asks the teacher to write them:
    ``Question 1: …`` blocks separated by a blank line. Preference pairs use it for the chosen and
    rejected completions, and :func:`arte.elicit.parse_questions` reads it back."""
    return "\n\n".join(f"Question {i}: {q.strip()}" for i, q in enumerate(questions, start=1))


def seed_question(task: Task, example: Example) -> str:
    """A seed example's question as the teacher sees it: :func:`arte.tasks.format_question`, ending in
    its ``Options:`` line for a multiple-choice example (added when the input lists the options itself,
    so that every shown question has the line the teacher's questions must end with)."""
    text = format_question(task, example)
    line = f"\n{OPTIONS_LABEL} {', '.join(example.choices)}"
    if example.choices and not text.endswith(line):
        text += line
    return text


def question_prompt(task: Task, seeds: Sequence[Example], n: int = QUESTIONS_PER_PROMPT) -> list[Message]:
    """Ask the teacher for ``n`` new questions like the seed examples (the paper uses 3 seeds, 5 new).

    For multiple-choice seeds the teacher is told to keep the ``Options:`` line, since students answer
    with one of the listed options."""
    shown = question_block([seed_question(task, e) for e in seeds])
    about = f" The task: {task.instruction}" if task.instruction else ""
    options = (f" End each question with its '{OPTIONS_LABEL} …' line, like the examples."
               if any(e.is_multiple_choice for e in seeds) else "")
    user = (f"Here are {len(seeds)} example questions of one task.{about}\n\n{shown}\n\n"
            f"Write {n} new questions of the same kind and format, different from the examples and from "
            f"each other. Number them 'Question 1:' to 'Question {n}:'.{options} Write only the questions, "
            f"no answers.")
    return [{"role": "user", "content": user}]


def rationale_prompt(task: Task, question: str, style: str) -> list[Message]:
    """Ask the teacher to solve ``question`` in the given rationale style, ending in ``<ans>…</ans>``."""
    if style not in RATIONALE_STYLES:
        raise KeyError(f"unknown rationale style {style!r}; known: {', '.join(RATIONALE_STYLES)}")
    about = f"{task.instruction}\n\n" if task.instruction else ""
    options = (" The answer must be one of the options, written exactly as listed."
               if f"\n{OPTIONS_LABEL}" in f"\n{question.strip()}" else "")
    user = (f"{about}Question: {question.strip()}\n\nGive your reasoning, then your final answer as "
            f"{ANS_OPEN}answer{ANS_CLOSE}.{options}")
    return [{"role": "system", "content": RATIONALE_STYLES[style]}, {"role": "user", "content": user}]


# Answer extraction, the second stage of zero-shot chain of thought (Kojima et al., 2022): the teacher's
# own reasoning, continued with this phrase, so that it states an answer it did not tag. (No tag after it:
# small models asked to continue "… <ans>" close the tag at once or copy a placeholder.)
ANSWER_EXTRACTION = "Therefore, the answer is"


def answer_extraction_prompt(conversation: Sequence[Message], reply: str) -> list[Message]:
    """``conversation`` plus the teacher's ``reply`` as an assistant message that ends in
    ``Therefore, the answer is``, for the teacher to continue with the answer."""
    head = f"{reply.rstrip()}\n" if reply.strip() else ""
    return [*conversation, {"role": "assistant", "content": f"{head}{ANSWER_EXTRACTION}"}]
