from pydantic import BaseModel, ConfigDict, Field


class ReleaseRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    delay_days: int = Field(ge=0, le=60)
    law: str = Field(min_length=1)


class Settings(BaseModel):
    """The ``plugins.radnet_icode`` section of a site file."""

    model_config = ConfigDict(extra="forbid")
    icode_valid_days: int = Field(90, ge=1, le=3650)
    report_release: dict[str, ReleaseRule] = Field(default_factory=dict)
