from widelog.cli.main import main

main()
