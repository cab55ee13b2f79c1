"""AT: a scheduler for one-off tasks. Shared code of every Lambda function (the layer)."""
