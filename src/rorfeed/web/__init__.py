"""`rorfeed web` (SPEC §10): the web page for the chef de projet and the bed-management cell.

- `app`: the application factory (server-rendered French pages, plain forms, no JavaScript);
- `views/`: one blueprint per area — units, kill-switch, journal (history, status), session;
- `security`: sessions, CSRF, `lead_required`, the response headers;
- `french`: labels, times in the local zone, what a change means for the ROR;
- `context`: what every view reaches (configuration, state store, `Control`, accounts);
- `server`: `serve(config)`, the application under hypercorn (HTTPS when `web.tls_cert` is set),
  requests bounded in size and time;
- `auth`: accounts (Argon2id hashes in the state store), login throttling, name rules; shared
  by the page and by `rorfeed users` (`rorfeed.users_cli`).

What the page shows of the feed is read by `rorfeed.reads`, which the command line uses too.
Every change made on the page goes through `rorfeed.control.Control`, the one implementation
the CLI uses too: the audit entry, the e-mail to the bed-management cell and the metrics are
the same whichever door was used. Flask, hypercorn and argon2 are imported only here, so that
`rorfeed --help` never loads them.
"""
