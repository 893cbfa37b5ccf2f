from textxfer.cli.main import main

main()
