from widelog.entrypoints.cli import main

main()
