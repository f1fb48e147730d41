from tuoba.cli import main

main()
