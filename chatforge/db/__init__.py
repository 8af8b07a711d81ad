from chatforge.db.models import (  # noqa: F401
    ApiKey,
    Base,
    Checkpoint,
    FineTuningJob,
    JobEvent,
    Model,
    Pipeline,
    Project,
    StoredFile,
    Worker,
    new_id,
    utcnow,
)
from chatforge.db.session import get_engine, session_factory, session_scope  # noqa: F401
