"""`rorfeed web` (SPEC §10): the web page for the chef de projet and the bed-management cell.

- `auth`: accounts (Argon2id hashes in the state store), login throttling, name rules;
  shared by the page and by `rorfeed users`.
- `app`: the Flask application (server-rendered French pages, plain forms, no JavaScript)
  and `serve(config)`, which runs it under cheroot (HTTPS when `web.tls_cert` is set).
- `accounts_cli`: `rorfeed users add|passwd|disable|list`.

Every change made on the page goes through `rorfeed.control.Control`, the one implementation
the CLI uses too: the audit entry, the e-mail to the bed-management cell and the metrics are
the same whichever door was used. Flask, cheroot and argon2 are imported only here, so that
`rorfeed --help` never loads them.
"""
