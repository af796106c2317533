"""The Slack app: wafer maps posted in channels, answers and follow-ups in threads."""
