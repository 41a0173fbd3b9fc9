"""The code lists a `fhir` destination writes, as data shipped with rorfeed (SPEC §12).

Each coded sub-extension of `ror-location-supported-capacity` is bound (required) to a ROR value
set (JDV) drawn from an ANS code system (TRE). The body names the TRE code system as
`coding.system`, as the ANS examples do (scenarios 2 and 2bis of the IG), never the JDV URL.

The codes are data, not logic, because the ANS changes them: `TRE_R330` 07 (Opérationnel) was
withdrawn on 2025-01-31, `TRE_R332` 03 (Indifférencié) on 2025-08-28, and the ROR answers 400 to
a withdrawn code. A list holds only the codes rorfeed may write: a code missing here is refused
by `body.check_body` before it leaves the machine. Updating a list is an edit of this file and
its version, and `describe()` (logged at start) says which versions a running rorfeed writes.

Source of every value: /work/shared/context/ror-national-fhir.md (the ANS documentation and the
"Terminologies de Santé" pages, TERM). A version written `None` is one that document does not
give.
"""

from __future__ import annotations

from dataclasses import dataclass

CAPACITY_EXTENSION_URL = (
    "https://interop.esante.gouv.fr/ig/fhir/ror/StructureDefinition/ror-location-supported-capacity"
)


@dataclass(frozen=True)
class CodeList:
    """One TRE code system as rorfeed writes it: the codes it may send, with their display."""

    name: str  # "TRE_R330-TypeStatutCapacite"
    system: str  # the canonical URL written as `coding.system`
    version: str | None  # the TRE version these codes were read from
    value_set: str  # the JDV the sub-extension is bound to, with its version when known
    codes: dict[str, str]  # code → display, only those rorfeed may write

    def display(self, code: str) -> str:
        """The display of `code`; KeyError when rorfeed may not write it."""
        return self.codes[code]


def _system(name: str) -> str:
    # The ANS spells each TRE canonical URL the same way: NOS/<TRE_Rnnn-Name>/FHIR/<TRE-Rnnn-Name>.
    return f"https://mos.esante.gouv.fr/NOS/{name}/FHIR/{name.replace('_', '-', 1)}"


# capacityType: lits or places. Beds only ("natureCapacite" with another code is a 400).
CAPACITY_TYPE = CodeList(
    "TRE_R329-NatureCapacite",
    _system("TRE_R329-NatureCapacite"),
    "20260505120000",  # TERM page of TRE_R329 (the context file gives no version)
    "JDV_J187",
    {"01": "Lit"},
)
# capacityStatus (JDV_J188 v20250131 = 01-06). rorfeed writes three of them: installed (which
# counts the closed beds too), available, closed. 07 Opérationnel is withdrawn ("n'est pas à
# utiliser dans les échanges"); 03 Occupé, 04 Réservé, 06 Supplémentaire are never sent.
CAPACITY_STATUS = CodeList(
    "TRE_R330-TypeStatutCapacite",
    _system("TRE_R330-TypeStatutCapacite"),
    "20250328120000",
    "JDV_J188 20250131",
    {"01": "Installé", "02": "Disponible", "05": "Fermé"},
)
# temporalityCapacity (JDV_J189 v20230922): 01 Courant; 02-05 are forecasts, never sent.
TEMPORALITY = CodeList(
    "TRE_R331-TemporaliteCapacite",
    _system("TRE_R331-TemporaliteCapacite"),
    None,
    "JDV_J189 20230922",
    {"01": "Courant"},
)
# genderCapacityAvailable, on the available beds only (JDV_J190 v20250828 = 01, 02, 04; 03
# Indifférencié was withdrawn on 2025-08-28 and the ROR answers 400 to it).
GENDER = CodeList(
    "TRE_R332-GenreCapacite",
    _system("TRE_R332-GenreCapacite"),
    "20250828",
    "JDV_J190 20250828",
    {"01": "Femme", "02": "Homme", "04": "Indéterminé"},
)
# capacityClosingType, on the closed beds only. 03 when the split réactivable / non réactivable
# is unknown (rorfeed reads one closed count).
CLOSING_TYPE = CodeList(
    "TRE_R333-TypeFermetureCapacite",
    _system("TRE_R333-TypeFermetureCapacite"),
    "20231215120000",
    "JDV_J191",
    {"01": "Réactivable", "02": "Non réactivable", "03": "Indéterminé"},
)
# capacitySourceType (JDV_J193): where the count comes from. 01 Saisie manuelle is what a person
# types in the ROR's own screens, never what an automated feed is.
SOURCE_TYPE = CodeList(
    "TRE_R335-TypeSourceCapacite",
    _system("TRE_R335-TypeSourceCapacite"),
    None,
    "JDV_J193",
    {"02": "Bed management", "03": "GAM", "04": "DPI"},
)
# temporaryAssignement (sic, the IG's spelling): 01 Aucune. 02 Covid+ / 03 Covid- are beds set
# aside for a crisis, which rorfeed's counts never are.
TEMPORARY_ASSIGNMENT = CodeList(
    "TRE_R337-AffectationTemporaire",
    _system("TRE_R337-AffectationTemporaire"),
    "20231215120000",  # TERM page of TRE_R337 (the context file gives no version)
    "JDV_J195",
    {"01": "Aucune"},
)

# The coded sub-extensions, by their `url`, in the order the ANS example writes them.
CODED: dict[str, CodeList] = {
    "capacityType": CAPACITY_TYPE,
    "capacityStatus": CAPACITY_STATUS,
    "temporalityCapacity": TEMPORALITY,
    "capacitySourceType": SOURCE_TYPE,
    "temporaryAssignement": TEMPORARY_ASSIGNMENT,
    "genderCapacityAvailable": GENDER,
    "capacityClosingType": CLOSING_TYPE,
}

# The statuses of the three counts rorfeed reads.
INSTALLED, AVAILABLE, CLOSED = "01", "02", "05"
CURRENT = "01"  # temporalityCapacity
BEDS = "01"  # capacityType
NO_TEMPORARY_ASSIGNMENT = "01"


def describe() -> str:
    """One line naming every list and its version, logged when a `fhir` destination starts."""
    return ", ".join(
        f"{c.name} {c.version or 'version not stated'} ({c.value_set}: {'/'.join(c.codes)})"
        for c in CODED.values()
    )
