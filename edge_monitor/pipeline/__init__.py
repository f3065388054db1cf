"""The per-machine loop: windows, preprocessing and input health, embedding and scoring,
decisions, learning the built-in bank, alarm clips, systemd watchdog pings.
"""
