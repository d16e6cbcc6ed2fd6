"""What both front ends (the `chorus` CLI and the dashboard) show the same way: the privacy
statement's text and compact numbers. Below both front ends; imports no front end, no store
and no gRPC."""
