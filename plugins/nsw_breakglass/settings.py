from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """The ``plugins.nsw_breakglass`` section of a site file."""

    model_config = ConfigDict(extra="forbid")
    otp_valid_minutes: int = Field(10, ge=1, le=60)
    breakglass_reasons: list[str] = Field(default_factory=lambda: ["Emergency care"], min_length=1)
