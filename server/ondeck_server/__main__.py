from ondeck_server.cli import main

main()
