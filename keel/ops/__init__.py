"""Operations, one module per domain: ``apt``, ``files``, ``server``, ``systemd``, ``python``.

Each operation is idempotent: it probes the host, decides, and changes only
what differs. Call it with the host first::

    from keel.ops import apt, files, systemd
    apt.packages(host, ["nginx"])
    files.symlink(host, "/etc/nginx/sites-enabled/hello", "/etc/nginx/sites-available/hello",
                  notify="reload nginx")
"""
