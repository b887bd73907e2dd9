from msakit.cli import main

main()
