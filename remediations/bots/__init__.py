"""Remediations of chat bots: a Telegram bot's webhook.

TASKS: task name → module (the registry's index, see remediations/core/registry.py).
"""

TASKS = {
    "bot-webhook": "webhook",
}
