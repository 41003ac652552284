"""The cluster daemon: store, API, controller loop, pod lifecycle, LB routes."""
