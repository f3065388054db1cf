"""MQTT: every topic and payload (topics), the client and its on-disk outbox (client,
journal), and remote commands (commands).
"""
