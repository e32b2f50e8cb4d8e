"""Input into a namespace: the behaviour-event contract and the event-time replay that publishes it."""
