"""Tornado handlers: parse the request, call one ChatService method, render JSON."""
