"""TaskManager: distributes and manages calculation jobs on Unix hosts without root."""
