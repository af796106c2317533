"""A stateful fake of the Slack Web API, file hosting and Socket Mode, for the bot's tests and benchmark."""

from fake_slack.server import ApiCall, FakeSlack, HostedFile

__all__ = ["ApiCall", "FakeSlack", "HostedFile"]
