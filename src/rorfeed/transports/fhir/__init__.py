"""`kind = "fhir"`: the national ROR's bed-capacity write path (SPEC §12) — the section.

The package: `codes.py` the shipped code lists, `body.py` the request bodies (pure),
`client.py` the HTTP client (httpx, imported only when a destination of this kind is opened).

Not registered in `rorfeed.transports.DESTINATIONS` yet, on purpose: the configuration must not
accept `kind = "fhir"` before a cycle really delivers with it (the per-indicator state of what
the ROR accepted, the resync, the cycle's wiring, `check`, `--dry-run` and the metrics).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from rorfeed.sections import DestinationBase, ReadableFile
from rorfeed.transports.fhir import codes

# The ANS's two environments (ror-national-fhir.md §3): a destination naming one of these hosts
# must say which environment it feeds, so that test data never reaches production by a
# copy-paste of the other block, nor production data the bac-à-sable.
ANS_HOSTS: dict[str, Literal["production", "test"]] = {
    "api-fhir.ror.esante.gouv.fr": "production",
    "auth-api.ror.esante.gouv.fr": "production",
    "bas-api-fhir.qualif.ror.esante.gouv.fr": "test",
    "bas-auth-api.qualif.ror.esante.gouv.fr": "test",
}


def https_url_problem(url: str) -> str | None:
    """Why `url` cannot name a server of the national ROR, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return "is not a URL"
    if parts.scheme != "https":
        return "must start with https:// (the ROR is reached over TLS only)"
    if not parts.hostname:
        return "names no host"
    if parts.username is not None or parts.password is not None:
        return "must not hold a user or password (the client certificate authenticates)"
    if parts.query or parts.fragment:
        return "must not hold a query or fragment"
    return None


def _code_of(code_list: codes.CodeList, value: str) -> str:
    if value not in code_list.codes:
        listed = ", ".join(f"{c} ({d})" for c, d in code_list.codes.items())
        raise ValueError(f'"{value}" is not in {code_list.name}: expected one of {listed}')
    return value


class FhirDestinationSection(DestinationBase):
    kind: Literal["fhir"] = Field(description="kind of destination", examples=["fhir"])
    base_url: str = Field(
        description="the ROR's FHIR API",
        examples=["https://bas-api-fhir.qualif.ror.esante.gouv.fr"],
    )
    token_url: str = Field(
        description="the OAuth 2 token endpoint",
        examples=[
            "https://bas-auth-api.qualif.ror.esante.gouv.fr/auth/realms/ror/protocol/"
            "openid-connect/token"
        ],
    )
    client_id: str = Field(
        min_length=1, description="the writer client_id the ANS issued", examples=["rorfeed"]
    )
    client_cert: ReadableFile = Field(
        description="IGC-Santé ORG/AUTH_CLI certificate (chain allowed), PEM",
        examples=["/etc/rorfeed/pki/auth_cli.pem"],
    )
    client_key: ReadableFile = Field(
        description="its private key, PEM", examples=["/etc/rorfeed/pki/auth_cli.key"]
    )
    client_key_passphrase_file: str = Field("", description="file holding the key's passphrase")
    client_key_passphrase_env: str = Field("", description="or: environment variable holding it")
    ca_bundle: ReadableFile = Field(
        description='trust for the token and API servers; never "no verify"',
        examples=["/etc/rorfeed/pki/igc-sante.pem"],
    )
    source_type: str = Field("02", description="TRE_R335: 02 bed management, 03 GAM, 04 DPI")
    available_gender: str = Field(
        "04", description="TRE_R332 for the available beds: 01, 02 or 04 (03 is withdrawn)"
    )
    closing_type: str = Field("03", description="TRE_R333 for the closed beds: 01, 02 or 03")
    resync_hours: int = Field(
        24, ge=1, le=24 * 7, description="every indicator is sent again at least this often"
    )
    max_requests_per_second: float = Field(5, gt=0, le=100, description="one request at a time")
    timeout_seconds: float = Field(
        300, gt=0, description="bounds the destination's whole delivery in a cycle"
    )

    @field_validator("base_url", "token_url")
    @classmethod
    def _https(cls, url: str) -> str:
        problem = https_url_problem(url)
        if problem:
            raise ValueError(problem)
        return url.rstrip("/")

    @field_validator("source_type")
    @classmethod
    def _source_type(cls, value: str) -> str:
        return _code_of(codes.SOURCE_TYPE, value)

    @field_validator("available_gender")
    @classmethod
    def _gender(cls, value: str) -> str:
        return _code_of(codes.GENDER, value)

    @field_validator("closing_type")
    @classmethod
    def _closing_type(cls, value: str) -> str:
        return _code_of(codes.CLOSING_TYPE, value)

    @model_validator(mode="after")
    def _environment_matches_hosts(self) -> FhirDestinationSection:
        for key in ("base_url", "token_url"):
            host = urlsplit(getattr(self, key)).hostname or ""
            known = ANS_HOSTS.get(host)
            if known is not None and known != self.environment:
                raise ValueError(
                    f'{key} is the ANS {known} server but environment = "{self.environment}"'
                    f' — set environment = "{known}" or use the {self.environment} URLs'
                )
        return self
