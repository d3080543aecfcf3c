import sys

from alpacare.review.cli import main

sys.exit(main())
