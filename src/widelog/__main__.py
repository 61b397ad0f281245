from widelog.cli import main

main()
