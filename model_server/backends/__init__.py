"""Model backends: everything that turns (wafer map, conversation, question) into an answer."""
