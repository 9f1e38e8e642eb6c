#Requires -Version 7.4
<#
.SYNOPSIS
    Shared helpers for the mailworker Entra ID scripts (Microsoft Graph PowerShell SDK).
.NOTES
    Imported by New-MailworkerApp.ps1, Update-MailworkerCertificate.ps1 and Test-TenantWideMailSend.ps1.
    Needs the Microsoft.Graph.Authentication and Microsoft.Graph.Applications modules (and
    Microsoft.Graph.Users for New-MailworkerApp.ps1 -Owner):
        Install-Module Microsoft.Graph.Authentication, Microsoft.Graph.Applications, Microsoft.Graph.Users -Scope CurrentUser
#>
Set-StrictMode -Version Latest

# Well-known application (client) id of Microsoft Graph, the same in every cloud.
$script:GraphAppId = '00000003-0000-0000-c000-000000000000'

function Connect-MailworkerGraph {
    <# Connects to Microsoft Graph with the given delegated scopes unless a suitable context exists. #>
    [CmdletBinding()]
    param(
        [Parameter(Mandatory)][string[]] $Scopes,
        [string] $TenantId,
        [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')][string] $Environment = 'Global'
    )
    $ctx = Get-MgContext
    $missing = if ($ctx) { $Scopes | Where-Object { $_ -notin $ctx.Scopes } } else { $Scopes }
    if (-not $ctx -or $missing -or ($TenantId -and $ctx.TenantId -ne $TenantId)) {
        $p = @{ Scopes = $Scopes; Environment = $Environment; NoWelcome = $true }
        if ($TenantId) { $p.TenantId = $TenantId }
        Connect-MgGraph @p | Out-Null
        $ctx = Get-MgContext
    }
    Write-Verbose "Connected to tenant $($ctx.TenantId) as $($ctx.Account)"
    return $ctx
}

function Get-MailworkerFederatedAudience {
    # The audience of a federated identity credential in each Microsoft cloud: "Public cloud:
    # api://AzureADTokenExchange; Fairfax: api://AzureADTokenExchangeUSGov; Mooncake:
    # api://AzureADTokenExchangeChina" (Configure an application to trust a managed identity,
    # https://learn.microsoft.com/entra/workload-id/workload-identity-federation-config-app-trust-managed-identity).
    # US Gov L4 and DoD L5 are both Fairfax. mailworker's graphmail.Cloud.FederatedAudience is the same table.
    param(
        [ValidateSet('Global', 'USGov', 'USGovDoD', 'China')]
        [string] $Environment = 'Global'
    )
    switch ($Environment) {
        'USGov' { 'api://AzureADTokenExchangeUSGov' }
        'USGovDoD' { 'api://AzureADTokenExchangeUSGov' }
        'China' { 'api://AzureADTokenExchangeChina' }
        default { 'api://AzureADTokenExchange' }
    }
}

function Get-MailworkerApplication {
    <# Returns the single app registration with this display name, $null if none, and throws if several. #>
    [CmdletBinding()]
    param([Parameter(Mandatory)][string] $DisplayName)
    $escaped = $DisplayName.Replace("'", "''")
    $apps = @(Get-MgApplication -Filter "displayName eq '$escaped'" -All)
    if ($apps.Count -gt 1) {
        throw "Several app registrations are named '$DisplayName' ($($apps.AppId -join ', ')). Rename or delete the extras first."
    }
    return $apps | Select-Object -First 1
}

function Get-GraphServicePrincipal {
    <# The Microsoft Graph service principal of this tenant (resource of Graph app role assignments). #>
    [CmdletBinding()]
    param()
    $sp = Get-MgServicePrincipal -Filter "appId eq '$script:GraphAppId'"
    if (-not $sp) { throw 'Microsoft Graph service principal not found in this tenant.' }
    return $sp
}

function Get-GraphAppRoleId {
    <# The id of a Microsoft Graph application permission (app role), e.g. Mail.Send, read from the tenant. #>
    [CmdletBinding()]
    param(
        [Parameter(Mandatory)] $GraphServicePrincipal,
        [Parameter(Mandatory)][string] $Permission
    )
    $role = $GraphServicePrincipal.AppRoles |
        Where-Object { $_.Value -eq $Permission -and $_.AllowedMemberTypes -contains 'Application' }
    if (-not $role) { throw "Microsoft Graph has no application permission '$Permission'." }
    return $role.Id
}

function New-MailworkerCertificate {
    <#
    .SYNOPSIS
        Creates a self-signed RSA certificate for an app registration and writes:
        <OutputDirectory>/<Name>.cer  public certificate (DER) to upload to Entra ID
        <OutputDirectory>/<Name>.pem  certificate + unencrypted PKCS#8 private key for mailworker
                                      (profiles.<name>.credential.certificateFile)
    .NOTES
        Works on Windows, Linux and macOS (.NET CertificateRequest). The .pem holds a private key:
        move it into the Kubernetes Secret (or a key vault) and delete the local copy.
        An organisation CA or Azure Key Vault-generated certificate is equally fine: upload its public part
        with -CertificatePath instead.
    #>
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory)][string] $Name,
        [Parameter(Mandatory)][string] $OutputDirectory,
        [ValidateRange(1, 24)][int] $ValidityMonths = 12,
        [ValidateSet(2048, 3072, 4096)][int] $KeySize = 3072
    )
    $stamp = (Get-Date).ToUniversalTime().ToString('yyyyMMdd')
    $base = Join-Path $OutputDirectory "$Name-$stamp"
    if (-not $PSCmdlet.ShouldProcess("$base.cer / $base.pem", 'Create self-signed certificate')) { return $null }
    New-Item -ItemType Directory -Force -Path $OutputDirectory | Out-Null
    $rsa = [System.Security.Cryptography.RSA]::Create($KeySize)
    try {
        $req = [System.Security.Cryptography.X509Certificates.CertificateRequest]::new(
            "CN=$Name", $rsa, [System.Security.Cryptography.HashAlgorithmName]::SHA256,
            [System.Security.Cryptography.RSASignaturePadding]::Pkcs1)
        $req.CertificateExtensions.Add(
            [System.Security.Cryptography.X509Certificates.X509KeyUsageExtension]::new(
                [System.Security.Cryptography.X509Certificates.X509KeyUsageFlags]::DigitalSignature, $true))
        $notBefore = [DateTimeOffset]::UtcNow.AddMinutes(-5)
        $cert = $req.CreateSelfSigned($notBefore, $notBefore.AddMonths($ValidityMonths))
        [System.IO.File]::WriteAllBytes("$base.cer", $cert.Export([System.Security.Cryptography.X509Certificates.X509ContentType]::Cert))
        $pem = $cert.ExportCertificatePem() + "`n" + $rsa.ExportPkcs8PrivateKeyPem() + "`n"
        [System.IO.File]::WriteAllText("$base.pem", $pem)
        if (-not $IsWindows) { chmod 600 "$base.pem" }
        Write-Warning "$base.pem contains the private key: put it in the Secret / key vault, then delete it."
        return [pscustomobject]@{ Certificate = $cert; CerPath = "$base.cer"; PemPath = "$base.pem" }
    }
    finally { $rsa.Dispose() }
}

function Read-MailworkerCertificate {
    <# Loads the public certificate from a .cer (DER or PEM) or .pem file. #>
    [CmdletBinding()]
    param([Parameter(Mandatory)][string] $Path)
    $text = Get-Content -Raw -Path $Path -ErrorAction Stop
    if ($text -match '(?s)-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----') {
        # The first certificate of the file. (X509Certificate2.CreateFromPem takes a ReadOnlySpan<char>,
        # which PowerShell's method binder cannot be relied on to convert from a string: decode the
        # base64 body and use the byte[] constructor instead.)
        $der = [System.Convert]::FromBase64String(($Matches[1] -replace '\s', ''))
        return [System.Security.Cryptography.X509Certificates.X509Certificate2]::new($der)
    }
    return [System.Security.Cryptography.X509Certificates.X509Certificate2]::new((Resolve-Path $Path).Path)
}

function ConvertTo-KeyCredential {
    <# Builds the keyCredential (public key only) that Entra ID stores for a certificate. #>
    [CmdletBinding()]
    param([Parameter(Mandatory)][System.Security.Cryptography.X509Certificates.X509Certificate2] $Certificate)
    return @{
        Type          = 'AsymmetricX509Cert'
        Usage         = 'Verify'
        Key           = $Certificate.RawData
        DisplayName   = "$($Certificate.Subject) $($Certificate.Thumbprint)"
        StartDateTime = $Certificate.NotBefore.ToUniversalTime()
        EndDateTime   = $Certificate.NotAfter.ToUniversalTime()
    }
}

function Get-KeyThumbprint {
    <# The SHA-1 thumbprint (hex) Entra ID keeps for a key credential (customKeyIdentifier). #>
    param([Parameter(Mandatory)] $KeyCredential)
    if ($KeyCredential.CustomKeyIdentifier) { return [System.Convert]::ToHexString($KeyCredential.CustomKeyIdentifier) }
    return $null
}

function Add-MailworkerKeyCredential {
    <#
    .SYNOPSIS
        Adds a certificate to an app registration, keeping its existing certificates. Idempotent:
        a certificate already present (same thumbprint) is not added again.
    .NOTES
        PATCH application.keyCredentials replaces the collection, so the existing entries are sent back
        with their keyId (Graph returns them without the key material and keeps them by keyId). The
        result is read back and the old keyIds are verified to still be there.
        addKey (Add-MgApplicationKey) is not used: it needs a proof-of-possession token signed with an
        existing valid certificate, which an operator usually does not hold.
    #>
    [CmdletBinding(SupportsShouldProcess)]
    param(
        [Parameter(Mandatory)] $Application,
        [Parameter(Mandatory)][System.Security.Cryptography.X509Certificates.X509Certificate2] $Certificate
    )
    $existing = @(Get-MgApplication -ApplicationId $Application.Id -Property 'id,keyCredentials').KeyCredentials
    $existing = @($existing | Where-Object { $_ })
    if ($existing | Where-Object { (Get-KeyThumbprint $_) -eq $Certificate.Thumbprint }) {
        Write-Host "Certificate $($Certificate.Thumbprint) is already on $($Application.DisplayName): nothing to add."
        return
    }
    if ($Certificate.NotAfter -lt (Get-Date).AddDays(30)) {
        Write-Warning "Certificate $($Certificate.Thumbprint) expires on $($Certificate.NotAfter.ToUniversalTime().ToString('u')), in less than 30 days."
    }
    # @(foreach ...) is an empty array when there is nothing to keep ($keep = foreach ... would be
    # $null, and @($null) a one-element array that sends a null credential to Graph).
    $keep = @(foreach ($k in $existing) {
        @{ KeyId = $k.KeyId; Type = $k.Type; Usage = $k.Usage; DisplayName = $k.DisplayName
           CustomKeyIdentifier = $k.CustomKeyIdentifier; StartDateTime = $k.StartDateTime; EndDateTime = $k.EndDateTime }
    })
    $all = $keep + @(ConvertTo-KeyCredential -Certificate $Certificate)
    if ($PSCmdlet.ShouldProcess($Application.DisplayName, "Add certificate $($Certificate.Thumbprint) (keeping $($existing.Count) existing)")) {
        Update-MgApplication -ApplicationId $Application.Id -KeyCredentials $all
        $afterIds = @((Get-MgApplication -ApplicationId $Application.Id -Property 'id,keyCredentials').KeyCredentials |
            Where-Object { $_ } | ForEach-Object { $_.KeyId })
        $lost = @($existing | Where-Object { $_.KeyId -notin $afterIds })
        if ($lost) { throw "Existing certificate(s) $(($lost | ForEach-Object { $_.KeyId }) -join ', ') disappeared after the update: re-add them now (verify in your tenant)." }
        Write-Host "Added certificate $($Certificate.Thumbprint) (valid until $($Certificate.NotAfter.ToUniversalTime().ToString('u'))) to $($Application.DisplayName)."
    }
}

Export-ModuleMember -Function Connect-MailworkerGraph, Get-MailworkerApplication, Get-MailworkerFederatedAudience, Get-GraphServicePrincipal,
    Get-GraphAppRoleId, New-MailworkerCertificate, Read-MailworkerCertificate, ConvertTo-KeyCredential,
    Get-KeyThumbprint, Add-MailworkerKeyCredential
