"""Fleets: many boxes run through the plant's own MQTT broker, no fleet server of our own.

`store` keeps the bundles installed on a box, `download` fetches one, `rollout` turns the
`bundle/install` and `bundle/rollback` commands into verified, watched swaps, and `view`
reads a whole fleet from the broker's retained topics (`edge-monitor fleet`).
"""
