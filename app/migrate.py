"""Run before the new release takes traffic: ``python migrate.py``.

Initialises or upgrades the app's SQLite database in $APP_STATE_DIR and
records $APP_RELEASE; idempotent. See ``hello/migrate.py`` for details.
"""

import sys
from pathlib import Path

# Import the hello package from this release, whatever the working directory.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hello.migrate import main

if __name__ == "__main__":
    sys.exit(main())
