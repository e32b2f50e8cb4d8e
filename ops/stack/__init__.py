"""The local stack: the embedded broker and its TLS front, the pseudonym key, namespaces, and the
worker/fleet processes with the day barrier."""
