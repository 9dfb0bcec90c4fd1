"""The ``plugins.radnet_icode`` section of a site file: visit codes, the imaging
centres (locations) and the report-release rules that state laws require."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

STATE = r"^[A-Z]{2}$"  # a US state's postal code: the jurisdiction of a centre and of a rule
KEY = r"^[a-z0-9][a-z0-9_-]{0,39}$"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Location(Strict):
    """One imaging centre. Studies are matched to it by the DICOM Institution Name or
    Station Name they carry (compared without case or surrounding spaces)."""

    key: str = Field(pattern=KEY)
    name: str = Field(min_length=1, max_length=120)
    state: str = Field(pattern=STATE)
    region: str = Field("", max_length=80)  # groups the centres in the picker, e.g. "Southern California"
    phone: str = Field(min_length=3, max_length=40)  # the help line patients of this centre call
    institution_names: list[str] = Field(default_factory=list)
    station_names: list[str] = Field(default_factory=list)


class ReleaseRule(Strict):
    """Hold reports of one or more jurisdictions back from patients for a while after signing."""

    name: str = Field(min_length=1, max_length=120)  # written to the audit trail with each decision
    jurisdictions: list[str] = Field(min_length=1)
    categories: list[str] = Field(default_factory=list)  # report categories covered; empty: every category
    flags: list[str] = Field(default_factory=list)  # covered only if the report has one of these; empty: any
    delay_days: int = Field(0, ge=0, le=60)
    delay_hours: int = Field(0, ge=0, le=24 * 60)
    business_days: bool = False  # count delay_days as Monday to Friday in the site's time zone
    law: str = Field(min_length=1, max_length=200)  # shown to the patient: "... as required by <law>"

    @field_validator("jurisdictions")
    @classmethod
    def states(cls, value: list[str]) -> list[str]:
        import re

        wrong = [item for item in value if not re.match(STATE, item)]
        if wrong:
            raise ValueError(f"jurisdictions are two-letter state codes such as TX, not {', '.join(wrong)}")
        return value

    @model_validator(mode="after")
    def some_delay(self) -> "ReleaseRule":
        if not (self.delay_days or self.delay_hours):
            raise ValueError("give delay_days or delay_hours (a rule without a delay holds nothing)")
        return self


class Settings(Strict):
    """The ``plugins.radnet_icode`` section of a site file."""

    icode_valid_days: int = Field(90, ge=1, le=3650)
    icode_session_hours: int = Field(2, ge=1, le=24)  # how long a browser stays in a visit opened by code
    age_of_majority: int = Field(18, ge=0, le=21)
    help_phone: str = Field("", max_length=40)  # the help desk's number when no centre was chosen
    locations: list[Location] = Field(default_factory=list)
    default_location: str | None = None  # the key of the centre of studies that match no centre
    release_rules: list[ReleaseRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def known_locations(self) -> "Settings":
        keys = [location.key for location in self.locations]
        doubled = sorted({key for key in keys if keys.count(key) > 1})
        if doubled:
            raise ValueError(f"location keys must differ: {', '.join(doubled)} appears twice")
        if self.default_location is not None and self.default_location not in keys:
            raise ValueError(f"default_location '{self.default_location}' is not the key of a location")
        return self

    def location(self, key: str | None) -> Location | None:
        return next((location for location in self.locations if location.key == key), None)
