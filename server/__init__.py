"""Realtime chat server for VK Mini Apps: application, domain rules and registry."""
