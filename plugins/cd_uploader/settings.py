from pydantic import BaseModel, ConfigDict, Field


class Settings(BaseModel):
    """The ``plugins.cd_uploader`` section of a site file."""

    model_config = ConfigDict(extra="forbid")
    max_upload_mb: int = Field(700, ge=1, le=20000)
