"""The daemon's local web view: live timeline, input health, alarms with clips, enrolment,
clip downloads for MQTT subscribers and Prometheus /metrics (see docs/web.md).

`server.WebServer` runs an aiohttp application on its own thread and event loop; it reads
the processing loop's snapshot and the live feed (`edge_monitor.pipeline.live`) and never
touches the audio path.
"""
