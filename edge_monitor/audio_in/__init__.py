"""Where the daemon's audio comes from: live devices (sounddevice), file replay, the
bounded chunk queue between them and the processing thread.
"""
