# escape=`

FROM mcr.microsoft.com/windows/servercore
RUN powershell -Command `
    New-Item -ItemType Directory C:\app ; `
    Write-Host done
COPY C:\src\ C:\app\
ENV PATH C:\tools;C:\app
