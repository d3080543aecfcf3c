from alpacare.cli import main

main()
