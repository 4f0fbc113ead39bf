"""Tasks: the inputs an analyzer runs on, registered by name (``headscope tasks`` lists them)."""

from headscope.tasks.registry import TASKS, TaskInfo, make_task, register_task
from headscope.tasks.repeated_tokens import RepeatedTokensTask
from headscope.tasks.word_pool import word_token_pool

__all__ = ["TASKS", "RepeatedTokensTask", "TaskInfo", "make_task", "register_task", "word_token_pool"]
